"""`sawt serve`: the OpenAI-compatible transcription server."""

from __future__ import annotations

import argparse

from core.flags import add_flags
from inference_server.config import ServerConfig, load_server_config
from sawt.commands import add_overrides, api_key_from_env


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve a checkpoint behind an OpenAI-compatible /v1/audio/transcriptions API",
        description=(
            "Serve a model checkpoint (as written by `sawt convert hf-to-orbax` or the trainer) over HTTP. "
            "POST /v1/audio/transcriptions accepts the OpenAI multipart request (file, model, language, prompt, "
            "response_format json|text|verbose_json|srt|vtt, temperature, stream). Also GET /v1/models, /health "
            "(liveness), /ready (readiness: 503 until the model is loaded and warmed) and /metrics (Prometheus). "
            "Requests are decoded together with continuous batching over --max-batch slots; past --max-queue "
            "waiting audio windows, requests get 429 with Retry-After. SIGTERM drains in-flight requests."
        ),
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="server settings as YAML (the keys of inference_server/config.py: ServerConfig); key=value "
        "overrides and the flags below are applied over it",
    )
    # One flag per ServerConfig field, typed and described by it; older spellings kept as aliases.
    add_flags(
        parser,
        ServerConfig,
        aliases={"request_timeout_s": ["--request-timeout"], "drain_grace_s": ["--drain-grace"]},
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=None,
        help="largest request body in MiB (sets max_body_bytes; default: 25)",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help=(
            "dev loop only (skaffold's dev profile): run the server as a child process and restart it (SIGTERM, "
            "drain, reload the model, recompile) whenever a .py file of the installed inference_server, "
            "trainer or sawt packages changes (default: off)"
        ),
    )
    add_overrides(parser, "server settings, e.g. max_batch=16 (anywhere among the flags)")
    parser.set_defaults(func=_run)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The settings of this command line: defaults < --config YAML < key=value overrides < flags."""
    from core.errors import UsageError
    from core.flags import given

    flags = given(args)
    if args.max_body_mb is not None:
        flags["max_body_bytes"] = int(args.max_body_mb * 1024 * 1024)
    config = load_server_config(args.config, args.overrides, flags)
    if not config.checkpoint:
        raise UsageError("--checkpoint is required (or checkpoint: in --config)")
    return config


def _run(args: argparse.Namespace) -> int:
    import logging
    import sys

    config = server_config(args)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.reload:
        from inference_server.reloader import main as reload_main

        # The child runs `sawt <the same arguments>` minus --reload, so it is this command line's argv.
        return reload_main(sys.argv[1:])
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every restore step at INFO
    api_key = api_key_from_env(config.api_key_env)

    from inference_server.app import build_app
    from inference_server.main import build_engine, run_server

    engine = build_engine(config.checkpoint, config)
    app = build_app(config, engine, api_key=api_key)
    logging.getLogger("sawt.serve").info(
        "serving %s on %s:%d (max batch %d, auth %s)",
        config.checkpoint,
        config.host,
        config.port,
        config.max_batch,
        "on" if api_key else "off",
    )
    run_server(app, config.host, config.port, config.drain_grace_s, config.log_level, config.access_log)
    return 0
