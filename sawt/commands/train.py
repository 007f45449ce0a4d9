"""`sawt train`: train the thinker (single process, local multi-process, or one host of a TPU slice)."""

from __future__ import annotations

import argparse

from sawt.commands import add_overrides

EPILOG = """\
examples:
  sawt train --config tiny --run-dir runs/tiny train.steps=50
  sawt train --config small --run-dir runs/small --local-processes 2 data.dir=build/demo/arrayrecord
  sawt train --config qwen3-omni-30b-a3b --run-dir /data/runs/ft1 \
      checkpoint.dir=gs://bucket/runs/ft1/checkpoints load_from=/models/qwen3-omni-orbax

Re-running with the same --run-dir resumes from its latest complete checkpoint. Exit code 42 means
"preempted (SIGTERM), checkpoint saved: restart me"; see docs/training.md.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the thinker (resumes a run directory)",
        description="Train the Qwen3-Omni thinker for Arabic ASR with checkpoints, eval and metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", required=True, help="preset name (tiny, small, qwen3-omni-30b-a3b) or YAML path"
    )
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument(
        "--local-processes",
        type=int,
        default=1,
        help="start N processes on this machine joined over 127.0.0.1 (emulates N hosts; default 1)",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="fake CPU devices per process when running on CPU (default 1 with --local-processes, else 8)",
    )
    p.add_argument("--plugin", default=None, help=argparse.SUPPRESS)  # tests: module with backend(cfg)
    add_overrides(p, "config overrides, e.g. train.steps=100 (anywhere among the flags)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import os
    import sys
    from pathlib import Path

    from core.errors import UsageError

    for item in args.overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not of the form key=value")
    run_dir = args.run_dir or str(Path("runs") / Path(args.config).stem)
    if "://" in run_dir:
        raise UsageError(
            f"--run-dir {run_dir}: must be a local or mounted path (logs, summary); put checkpoints on GCS "
            "with checkpoint.dir=gs://..."
        )
    if args.local_processes < 1:
        raise UsageError("--local-processes must be >= 1")
    if args.local_processes > 1 and "SAWT_COORDINATOR" not in os.environ:
        from trainer.config import load_experiment
        from trainer.launch import launch_local

        load_experiment(args.config, args.overrides)  # fail fast on a bad config, before any child starts
        child_argv = ["--config", args.config, "--run-dir", run_dir, *args.overrides]
        if args.plugin:
            child_argv += ["--plugin", args.plugin]
        return launch_local(args.local_processes, child_argv, args.cpu_devices or 1)

    # A local launcher's child gets its share as --cpu-devices; without the flag, a device count already set
    # through XLA_FLAGS (a stand-in TPU host, tests/helpers/standin_cluster.py) is kept, else 8.
    xla_count = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    devices = args.cpu_devices or (None if xla_count else 8)
    if not _has_accelerator():
        # No TPU here: keep jax from probing libtpu, and give the CPU the fake devices asked for.
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if devices and os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_num_cpu_devices", devices)

    from trainer.backend import load_backend
    from trainer.config import load_experiment
    from trainer.distributed import init_distributed
    from trainer.train import run

    cfg = load_experiment(args.config, args.overrides)
    init_distributed(cfg)
    backend = load_backend(cfg, args.plugin)
    code = run(cfg, Path(run_dir), backend)
    sys.stdout.flush()
    return code


def _has_accelerator() -> bool:
    """A TPU VM exposes /dev/accel* (v4) or /dev/vfio (v5+); JAX_PLATFORMS naming one counts too."""
    import glob
    import os

    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms != "cpu"
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
