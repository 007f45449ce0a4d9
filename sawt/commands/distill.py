"""`sawt distill`: reasoning traces from a teacher LLM, joined with the audio into SFT records."""

from __future__ import annotations

import argparse

from sawt.commands import api_key_from_env


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "distill",
        help="distil reasoning traces from a teacher LLM into SFT data",
        description="Generate reasoning traces with an OpenAI-compatible teacher, then build SFT records.",
    )
    steps = parser.add_subparsers(dest="distill_command", metavar="STEP", required=True)

    gen = steps.add_parser(
        "generate-cot",
        help="ask a teacher chat endpoint for a reasoning trace per sample",
        description=(
            "For each record of the split, render the prompt template with the transcript and metadata, ask "
            "TEACHER_URL/chat/completions, and append {sample_id, reasoning, answer, ...} to OUT/cot.jsonl "
            "(fsynced per item). Transient errors are retried with exponential backoff; items that still fail "
            "go to OUT/failures.jsonl and are retried by the next run. A re-run skips finished ids."
        ),
    )
    gen.add_argument(
        "--teacher-url", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1"
    )
    gen.add_argument("--model", required=True, help="teacher model name")
    gen.add_argument("--data", required=True, help="a split directory of *.array_record, or the data root")
    gen.add_argument("--split", default=None, help="split under --data when --data is the root")
    gen.add_argument(
        "--out", required=True, help="output directory (cot.jsonl, failures.jsonl, summary.json)"
    )
    gen.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    gen.add_argument("--template", default=None, help="Jinja2 prompt template (default: built-in cot_asr)")
    gen.add_argument(
        "--retries", type=int, default=5, help="retries per item on transient errors (default: 5)"
    )
    gen.add_argument("--backoff", type=float, default=1.0, help="first retry's max delay, doubled each time")
    gen.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds")
    gen.add_argument("--temperature", type=float, default=0.6, help="teacher sampling temperature")
    gen.add_argument("--max-tokens", type=int, default=2048, help="teacher reply budget")
    gen.add_argument(
        "--api-key-env", metavar="VAR", help="environment variable holding the teacher's API key"
    )
    gen.set_defaults(func=_generate)

    sft = steps.add_parser(
        "build-sft",
        help="join traces with audio into ArrayRecord SFT records",
        description=(
            "Join OUT/cot.jsonl of generate-cot with the audio of --data into seed-schema ArrayRecord records "
            "under OUT/<out-split>/ whose text is '<think>\\nREASONING\\n</think>\\n\\nTRANSCRIPT' (extra features: "
            "reasoning, transcript, teacher_answer), plus index.npz for the trainer's loader."
        ),
    )
    sft.add_argument("--cot", required=True, help="generate-cot output directory (or its cot.jsonl)")
    sft.add_argument("--data", required=True, help="the same split given to generate-cot")
    sft.add_argument("--split", default=None, help="split under --data when --data is the root")
    sft.add_argument("--out", required=True, help="output data root")
    sft.add_argument("--out-split", default="train", help="split name to write (default: train)")
    sft.set_defaults(func=_build)


def _generate(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import logging
    from pathlib import Path

    from core.errors import UsageError
    from tools.distill import generate_cot

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    api_key = api_key_from_env(args.api_key_env)
    try:
        template = generate_cot.load_template(args.template)
    except ValueError as err:
        raise UsageError(str(err)) from None
    items, bad = generate_cot.read_items(args.data, args.split)
    counts = asyncio.run(
        generate_cot.generate(
            items, Path(args.out), teacher_url=args.teacher_url, model=args.model, template=template,
            concurrency=args.concurrency, retries=args.retries, backoff_s=args.backoff, timeout_s=args.timeout,
            temperature=args.temperature, max_tokens=args.max_tokens, api_key=api_key,
        )
    )  # fmt: skip
    counts["bad_records"] = bad
    print(json.dumps(counts))
    return 1 if counts["failed"] else 0


def _build(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    from tools.distill import build_sft

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    counts = build_sft.build(
        Path(args.cot), args.data, Path(args.out), split=args.split, out_split=args.out_split
    )
    print(json.dumps(counts))
    return 0
