"""`sawt serve`: the OpenAI-compatible transcription server."""

from __future__ import annotations

import argparse


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
    parser.add_argument("--checkpoint", required=True, help="model checkpoint directory (or trainer run dir)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument("--model-name", default="sawt-asr", help="model id clients send (default: sawt-asr)")
    parser.add_argument("--max-batch", type=int, default=8, help="decode slots batched together (default: 8)")
    parser.add_argument(
        "--max-queue", type=int, default=64, help="audio windows allowed to wait for a slot (default: 64)"
    )
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require 'Authorization: Bearer <key>' on /v1/*, the key read from environment variable VAR",
    )
    parser.add_argument("--max-body-mb", type=float, default=25.0, help="largest request body (default: 25)")
    parser.add_argument(
        "--max-audio-seconds", type=float, default=3600.0, help="longest accepted audio (default: 3600)"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=300.0, help="per-request deadline in seconds (default: 300)"
    )
    parser.add_argument(
        "--drain-grace",
        type=float,
        default=30.0,
        help="seconds in-flight requests get on SIGTERM (default: 30)",
    )
    parser.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        help="shard the weights over this many local chips (4 on a v4-8 host; default: 1)",
    )
    parser.add_argument("--window-s", type=float, default=30.0, help="audio per model window (default: 30)")
    parser.add_argument(
        "--overlap-s", type=float, default=4.0, help="overlap of long-audio windows (default: 4)"
    )
    parser.add_argument(
        "--cut",
        choices=("silence", "fixed"),
        default="silence",
        help="where long audio is cut: in the quietest pause of each window's last --search-s seconds, with a "
        "fixed cut where there is none (silence), or every --window-s minus --overlap-s seconds (fixed) "
        "(default: silence)",
    )
    parser.add_argument(
        "--search-s",
        type=float,
        default=5.0,
        help="how far back from a window's end a pause is sought (default: 5)",
    )
    parser.add_argument(
        "--max-windows-per-request",
        type=int,
        default=4,
        help="most windows of one request decoding at once, so a long upload leaves slots to short requests "
        "(default: 4)",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=224,
        help="most tokens of a request's prompt kept as context (its end); 0 refuses prompts (default: 224)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=448, help="most tokens generated per window (default: 448)"
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument(
        "--reload",
        action="store_true",
        help=(
            "dev loop only (skaffold's dev profile): run the server as a child process and restart it (SIGTERM, "
            "drain, reload the model, recompile) whenever a .py file of the installed inference_server, "
            "trainer or sawt packages changes (default: off)"
        ),
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging
    import os
    import sys

    from core.errors import UsageError

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.reload:
        from inference_server.reloader import main as reload_main

        # The child runs `sawt <the same arguments>` minus --reload, so it is this command line's argv.
        return reload_main(sys.argv[1:])
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every restore step at INFO
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is unset or empty")
    from pydantic import ValidationError

    from inference_server.config import ServerConfig

    try:
        config = ServerConfig(
            model_name=args.model_name,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            max_audio_seconds=args.max_audio_seconds,
            request_timeout_s=args.request_timeout,
            window_s=args.window_s,
            overlap_s=args.overlap_s,
            cut=args.cut,
            search_s=args.search_s,
            max_windows_per_request=args.max_windows_per_request,
            max_prompt_tokens=args.max_prompt_tokens,
            max_new_tokens=args.max_new_tokens,
            drain_grace_s=args.drain_grace,
            tensor_parallel=args.tensor_parallel,
        )
    except ValidationError as err:
        first = err.errors()[0]
        raise UsageError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    if config.overlap_s >= config.window_s:
        raise UsageError("--overlap-s must be shorter than --window-s")

    from inference_server.app import build_app
    from inference_server.main import build_engine, run_server

    engine = build_engine(args.checkpoint, config)
    app = build_app(config, engine, api_key=api_key)
    logging.getLogger("sawt.serve").info(
        "serving %s on %s:%d (max batch %d, auth %s)",
        args.checkpoint,
        args.host,
        args.port,
        config.max_batch,
        "on" if api_key else "off",
    )
    run_server(app, args.host, args.port, config.drain_grace_s, args.log_level)
    return 0
