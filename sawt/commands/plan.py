"""`sawt plan`: compile the training step ahead of time for a TPU topology and report memory and speed."""

from __future__ import annotations

import argparse

from sawt.commands import add_overrides

EPILOG = """\
examples:
  sawt plan --config tiny --topology v4-8
  sawt plan --config qwen3-omni-30b-a3b --topology v4-32 --mesh fsdp=16 train.freeze=[audio_encoder]
  sawt plan --config qwen3-omni-30b-a3b --topology v4-32 --mesh fsdp=4,expert=4 --json plan.json
  sawt plan --config qwen3-omni-30b-a3b --topology v4-32 --fill pack.json --clips 520296 --no-compile
  sawt plan --config qwen3-omni-30b-a3b --topology v4-32 --index /data/arrayrecord/train --no-compile

Shapes only: no weights are read and no TPU is needed (libtpu compiles for compile-only devices). JSON keys
include fits, per_chip_bytes, flops_per_step and predicted_step_seconds (see docs/training.md). With --fill
(the JSON of `sawt bench pack`) or --index (a converted split), the plan also predicts one epoch, packed
and bucketed: steps, and wall time at the chip's peak and at --mfu (JSON key epoch).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="compile the train step for a TPU topology: per-chip memory, FLOPs, step time",
        description="Compile the real training step ahead of time for a Cloud TPU topology on this machine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="preset name or YAML path")
    p.add_argument("--topology", required=True, help="v4-8, v4-16, v4-32, v5p-32, v5litepod-16 or v6e-16")
    p.add_argument(
        "--mesh",
        default=None,
        help="mesh axes as data=1,fsdp=16,expert=1,tensor=1 (unset axes: 1; one may be -1 = the rest)",
    )
    p.add_argument(
        "--mfu", type=float, default=0.4, help="MFU for the second predicted step time (default 0.4)"
    )
    p.add_argument("--seq", type=int, default=None, help="text tokens per row (default: largest data bucket)")
    p.add_argument("--frames", type=int, default=None, help="mel frames per clip (default: largest bucket)")
    p.add_argument(
        "--fill",
        default=None,
        metavar="FILE",
        help="predict an epoch from the batch fill `sawt bench pack --json FILE` measured",
    )
    p.add_argument(
        "--index",
        default=None,
        metavar="SPLIT",
        help="predict an epoch from a converted split's index.npz (its directory or the file; the config's "
        "tokenizer counts the transcripts' tokens)",
    )
    p.add_argument(
        "--clips",
        type=int,
        default=None,
        help="clips in the epoch (default: the bench's recorded epoch, or the split's own clips)",
    )
    p.add_argument(
        "--no-compile", action="store_true", help="skip the AOT compile (FLOPs and the epoch prediction only)"
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the plan as JSON here")
    p.add_argument(
        "--timeout", type=float, default=3600, help="give up on the compile after this many seconds"
    )
    add_overrides(p, "config overrides, e.g. train.global_batch_size=64 (anywhere among the flags)")
    p.set_defaults(func=_run)


def mesh_overrides(text: str | None) -> list[str]:
    """``fsdp=4,expert=4`` -> overrides setting every mesh axis (unnamed axes: 1)."""
    from core.errors import UsageError

    if not text:
        return []
    axes = {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in axes:
            raise UsageError(f"--mesh: {part!r} is not AXIS=N with AXIS one of {', '.join(axes)}")
        try:
            axes[key.strip()] = int(value)
        except ValueError:
            raise UsageError(f"--mesh: {part!r}: {value!r} is not an integer") from None
    return [f"mesh.{k}={v}" for k, v in axes.items()]


def _run(args: argparse.Namespace) -> int:
    from core.errors import UsageError
    from tools.aot_plan import TOPOLOGIES, format_plan
    from trainer.config import load_experiment

    if args.topology not in TOPOLOGIES:
        raise UsageError(f"unknown topology {args.topology!r}; known: {', '.join(TOPOLOGIES)}")
    if args.fill and args.index:
        raise UsageError("--fill and --index both give the batch fill; pass one")
    if args.no_compile and not (args.fill or args.index):
        raise UsageError("--no-compile leaves nothing to report without --fill or --index")
    overrides = [*args.overrides, *mesh_overrides(args.mesh)]
    cfg = load_experiment(args.config, overrides)  # fail fast on a bad config
    result: dict = {"config": args.config, "overrides": overrides, "topology": args.topology}
    if not args.no_compile:
        compiled = _compile(args, overrides)
        if isinstance(compiled, int):
            return compiled
        result = compiled
        print(format_plan(result))
    if args.fill or args.index:
        from tools import epoch_plan

        try:
            stats = (
                epoch_plan.fill_from_bench(args.fill)
                if args.fill
                else epoch_plan.fill_from_index(cfg, args.index)
            )
        except (OSError, ValueError) as err:
            raise UsageError(str(err)) from err
        topo = TOPOLOGIES[args.topology]
        result["epoch"] = epoch_plan.estimate(
            stats, cfg.model, cfg.train.freeze, topo.chips, topo.peak_flops, args.mfu, args.clips
        )
        result["epoch"]["fill_source"] = stats.get("source")
        print(epoch_plan.format_epoch(result["epoch"], args.topology))
    if args.json:
        from core.fileio import atomic_write_json

        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _compile(args: argparse.Namespace, overrides: list[str]) -> dict | int:
    """Runs the AOT compile in a subprocess (libtpu's environment); the plan dict, or an exit code."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from core.errors import UsageError
    from tools.aot_plan import AOT_ENV, EXIT_BAD_INPUT

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan.json"
        cmd = [
            sys.executable,
            "-m",
            "tools.aot_plan",
            "--config",
            args.config,
            "--topology",
            args.topology,
            "--mfu",
            str(args.mfu),
            "--out",
            str(out),
        ]
        if args.seq:
            cmd += ["--seq", str(args.seq)]
        if args.frames:
            cmd += ["--frames", str(args.frames)]
        print(f"compiling the train step for {args.topology} (shapes only; may take minutes)...", flush=True)
        try:
            proc = subprocess.run(
                [*cmd, "--", *overrides],
                env={**os.environ, **AOT_ENV},
                timeout=args.timeout,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        except subprocess.TimeoutExpired:
            print(f"sawt plan: compile did not finish in {args.timeout:.0f} s", file=sys.stderr)
            return 1
        if proc.returncode == EXIT_BAD_INPUT:
            message = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
            raise UsageError(message[-1].removeprefix("error: ") if message else "invalid plan input")
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join(
                line for line in proc.stdout.splitlines() if not line.startswith(("E0", "W0", "I0"))
            )
            print(tail[-4000:], file=sys.stderr)
            print(f"sawt plan: the AOT compile failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        result = json.loads(out.read_text())
    return result
