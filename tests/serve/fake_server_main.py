"""A server process with the FakeEngine, run through the same `run_server` as `sawt serve` (drain tests)."""

import sys

from inference_server.app import build_app
from inference_server.config import ServerConfig
from inference_server.engine import FakeEngine
from inference_server.main import run_server

if __name__ == "__main__":
    port, grace = int(sys.argv[1]), float(sys.argv[2])
    config = ServerConfig(model_name="sawt-asr", drain_grace_s=grace)
    app = build_app(config, FakeEngine(step_s=0.1, max_batch=2))
    run_server(app, "127.0.0.1", port, grace, log_level="warning")
