"""Builds both images and runs them the way a user would: train two steps on CPU, serve and transcribe a clip.

Each smoke step uses only a command's documented interface (`sawt data synth|convert`, `sawt train`,
`sawt serve`). A command that is not in the source tree yet makes its step NOT RUN, loudly, never a silent
pass; `Report.exit_code` then fails the CI run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tools.dev.images.host import Podman, tail
from tools.dev.images.report import StepFailed, StepNotRunnable, say

REPO = Path(__file__).resolve().parents[3]
TRAINER_DOCKERFILE = REPO / "images" / "trainer.Dockerfile"
SERVER_DOCKERFILE = REPO / "images" / "server.Dockerfile"
TRAINER_IMAGE = "localhost/sawt-trainer:ci"
SERVER_IMAGE = "localhost/sawt-server:ci"
IMAGE_UID = 1000  # USER in both Dockerfiles
# JAX's persistent compilation cache in the shared work folder: the SIGTERM run reuses what the first
# training run compiled (minutes on 2 cores), which keeps CI's image step near its 10-minute budget.
JAX_CACHE = (
    "-e",
    "JAX_COMPILATION_CACHE_DIR=/data/jax-cache",
    "-e",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0",
)
# The run length enters the compiled step only through the learning-rate schedule; a constant one makes
# the 2-step run and the long SIGTERM run the same program, so the second one hits the cache.
SAME_PROGRAM_FOR_ANY_LENGTH = ("optimizer.decay=constant", "optimizer.warmup_steps=0")
# The end-of-run evaluation still runs (and so is tested), on one batch with short hypotheses.
SMALL_EVAL = ("eval.max_batches=1", "eval.max_new_tokens=8")
CLIP_TEXT = "السلام عليكم ورحمة الله"
# Where each command the smoke runs need is implemented, for the NOT RUN message.
COMMAND_SOURCES = {
    "data": "tools/data/",
    "train": "trainer/train.py",
    "serve": "inference_server/main.py",
    "convert": "tools/hf/convert.py",
}


def vcs_ref() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def build_image(podman: Podman, dockerfile: Path, tag: str, timeout: float) -> None:
    """`podman build --pull=never` of `dockerfile` with the repository as context (layers cached)."""
    log_name = f"build-{dockerfile.stem.replace('.Dockerfile', '')}.log"
    status = podman.run_logged(
        log_name,
        "build",
        "--pull=never",
        "--layers",
        # Docker's image format, as `docker build` makes: OCI has no SHELL (or HEALTHCHECK) field.
        "--format",
        "docker",
        "-f",
        str(dockerfile),
        "-t",
        tag,
        "--build-arg",
        f"VCS_REF={vcs_ref()}",
        str(REPO),
        timeout=timeout,
    )
    if status != 0:
        raise StepFailed(
            f"podman build -f {dockerfile.relative_to(REPO)} exited {status}; {tail(podman.logs_dir / log_name)}"
        )


def check_image_user(podman: Podman, image: str) -> None:
    done = podman.run("run", "--rm", "--network=none", image, "id", "-u")
    if done.stdout.strip() != str(IMAGE_UID):
        raise StepFailed(f"{image} runs as uid {done.stdout.strip()!r}, expected the non-root {IMAGE_UID}")


def require_command(podman: Podman, image: str, command: str, *sub: str) -> None:
    """Raises StepNotRunnable when `sawt COMMAND` is not in the image yet (its module has not landed)."""
    done = podman.run("run", "--rm", "--network=none", image, "sawt", command, *sub, "--help", check=False)
    if done.returncode == 0:
        return
    if "invalid choice" in done.stderr:
        source = COMMAND_SOURCES.get(command, f"sawt/commands/{command}.py")
        raise StepNotRunnable(f"`sawt {' '.join((command, *sub))}` is not in this source tree yet ({source})")
    raise StepFailed(
        f"`sawt {command} {' '.join(sub)} --help` exited {done.returncode}: {done.stderr[-1500:]}"
    )


def require_module(podman: Podman, image: str, module: str, what: str) -> None:
    """Raises StepNotRunnable when python module `module` is not in the image (its author has not landed it)."""
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    done = podman.run(
        "run", "--rm", "--network=none", "--entrypoint", "python", image, "-c", probe, check=False
    )
    if done.returncode == 1:
        raise StepNotRunnable(f"{module} ({what}) is not in this source tree yet")
    if done.returncode != 0:
        raise StepFailed(f"probing {module} in {image} exited {done.returncode}: {done.stderr[-1500:]}")


class SmokeRun:
    """The smoke steps, sharing one work folder mounted at /data in every container."""

    def __init__(self, podman: Podman, timeout: float) -> None:
        self.podman = podman
        self.timeout = timeout
        self.data = podman.work_dir / "smoke"
        self.server_name: str | None = None
        self.server_port = 0

    def prepare(self) -> None:
        if self.data.exists():
            subprocess.run(["rm", "-rf", str(self.data)], check=True)
        self.data.mkdir(parents=True)
        # The containers run as the image's non-root user, which must own what it writes.
        os.chown(self.data, IMAGE_UID, IMAGE_UID)

    def run_in(self, image: str, log_name: str, *argv: str) -> None:
        """Runs `argv` in `image` under its tini (no network, /data mounted); StepFailed on a non-zero exit."""
        say(f"    {' '.join(argv)}")
        cmd = ("run", "--rm", "--network=none", "-v", f"{self.data}:/data", *JAX_CACHE, image, *argv)
        status = self.podman.run_logged(log_name, *cmd, timeout=self.timeout)
        if status != 0:
            raise StepFailed(f"`{' '.join(argv)}` exited {status}; {tail(self.podman.logs_dir / log_name)}")

    # ---- trainer ----------------------------------------------------------------------------------------
    def trainer_data(self) -> None:
        require_command(self.podman, TRAINER_IMAGE, "data", "synth")
        self.run_in(
            TRAINER_IMAGE,
            "smoke-data-synth.log",
            "sawt",
            "data",
            "synth",
            "--out",
            "/data/synth",
            "--n",
            "12",
        )
        self.run_in(
            TRAINER_IMAGE,
            "smoke-data-convert.log",
            *("sawt", "data", "convert", "--src", "/data/synth", "--dst", "/data/arrayrecord"),
        )
        if not list((self.data / "arrayrecord").rglob("*.array_record*")):
            raise StepFailed(
                f"`sawt data convert` wrote no ArrayRecord shard under {self.data / 'arrayrecord'}"
            )

    def train_argv(self, run_dir: str, steps: int, *extra: str) -> tuple[str, ...]:
        return (
            # One CPU device: the image is under test here; sharding over fake devices is the unit tests' job,
            # and compiling for 8 of them on CI's 2 cores costs minutes.
            *("sawt", "train", "--config", "tiny", "--cpu-devices", "1", "--run-dir", run_dir),
            *("data.dir=/data/arrayrecord", "tokenizer.dir=/data/synth/tokenizer", f"train.steps={steps}"),
            *SAME_PROGRAM_FOR_ANY_LENGTH,
            *extra,
        )

    def trainer_train(self) -> None:
        require_command(self.podman, TRAINER_IMAGE, "train")
        require_module(
            self.podman,
            TRAINER_IMAGE,
            "trainer.backend",
            "the real Thinker + Grain backend, trainer/backend.py",
        )
        # JAX_PLATFORMS is left unset on purpose: the image must find no TPU and fall back to CPU by itself.
        self.run_in(TRAINER_IMAGE, "smoke-train.log", *self.train_argv("/data/run", 2, *SMALL_EVAL))
        if not (self.data / "run" / "checkpoints").is_dir():
            raise StepFailed(f"`sawt train` exited 0 but wrote no checkpoints/ under {self.data / 'run'}")

    def trainer_sigterm(self) -> None:
        """SIGTERM to the container must reach `sawt train` through tini: it saves a checkpoint and exits 42."""
        run_dir = self.data / "run-sigterm"
        name = f"sawt-ci-train-{os.getpid()}"
        argv = self.train_argv("/data/run-sigterm", 100_000)
        say(f"    {' '.join(argv)}  (then SIGTERM once it is training)")
        self.podman.run(
            *("run", "-d", "--name", name, "--network=none", "-v", f"{self.data}:/data", *JAX_CACHE),
            *(TRAINER_IMAGE, *argv),
        )
        try:
            deadline = time.monotonic() + self.timeout
            while not _has_logged_a_step(run_dir / "metrics.jsonl"):
                if time.monotonic() > deadline:
                    raise StepFailed(
                        f"no training step logged in {run_dir / 'metrics.jsonl'} within {self.timeout:.0f} s"
                    )
                self._fail_if_exited(name, "before its first logged step")
                time.sleep(1)
            grace = 120  # a checkpoint save of the tiny model takes seconds
            self.podman.run("kill", "--signal", "TERM", name)
            code = self.podman.run("wait", name, timeout=grace).stdout.strip()
            if code != "42":
                raise StepFailed(
                    f"after SIGTERM `sawt train` exited {code}, expected 42 (preempted, checkpoint saved)"
                )
            if not any((run_dir / "checkpoints").glob("*")):
                raise StepFailed(f"`sawt train` exited 42 but {run_dir / 'checkpoints'} holds no checkpoint")
            say("    SIGTERM: the trainer saved a checkpoint and exited 42")
        finally:
            log = self.podman.run("logs", name, check=False)
            (self.podman.logs_dir / "smoke-train-sigterm.log").write_text(log.stdout + log.stderr)
            self.podman.run("rm", "-f", name, check=False)  # keep nothing running, whatever happened

    # ---- server -----------------------------------------------------------------------------------------
    def server_checkpoint(self) -> None:
        """A tiny model checkpoint made the way a user makes one: an HF directory through `sawt convert`.

        The HF directory holds random weights of the tiny preset in the released key layout
        (tools.dev.synthetic_hf) and the demo tokenizer made by the data step. The weights are written on the
        host, by this checkout's interpreter: dev-only tooling is not in the wheel, so not in the images.
        """
        require_command(self.podman, TRAINER_IMAGE, "convert", "hf-to-orbax")
        hf = self.data / "hf"
        argv = (sys.executable, "-m", "tools.dev.synthetic_hf", "--out", str(hf), "--preset", "tiny")
        say(f"    (host) {' '.join(argv[1:])}")
        log_path = self.podman.logs_dir / "smoke-synthetic-hf.log"
        with log_path.open("w") as log:
            done = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=self.timeout)
        if done.returncode != 0:
            raise StepFailed(f"synthetic HF checkpoint: exited {done.returncode}; {tail(log_path)}")
        for path in (hf, *hf.rglob("*")):
            os.chown(path, IMAGE_UID, IMAGE_UID)
        tokenizer = self.data / "synth" / "tokenizer"
        if not (tokenizer / "tokenizer.json").is_file():
            raise StepFailed(f"{tokenizer}: no tokenizer.json from `sawt data synth`")
        for item in tokenizer.iterdir():
            if item.is_file() and not (self.data / "hf" / item.name).exists():
                shutil.copy2(item, self.data / "hf" / item.name)
                os.chown(self.data / "hf" / item.name, IMAGE_UID, IMAGE_UID)
        self.run_in(
            TRAINER_IMAGE,
            "smoke-convert.log",
            *("sawt", "convert", "hf-to-orbax", "--hf", "/data/hf", "--out", "/data/ckpt", "--quiet"),
        )

    def server_start(self, checkpoint: str = "/data/ckpt") -> None:
        """Starts `sawt serve` detached; it loads and compiles while the trainer steps run (2 cores, CI budget)."""
        require_command(self.podman, SERVER_IMAGE, "serve")
        self.run_in(
            TRAINER_IMAGE, "smoke-clip.log", "espeak-ng", "-w", "/data/clip.wav", "-v", "ar", CLIP_TEXT
        )
        self.server_port = free_port()
        self.server_name = f"sawt-ci-server-{os.getpid()}"
        port = str(self.server_port)
        argv = ("sawt", "serve", "--checkpoint", checkpoint, "--host", "0.0.0.0", "--port", port)
        say(f"    {' '.join(argv)}  (published on 127.0.0.1:{port})")
        self.podman.run(
            *("run", "-d", "--name", self.server_name, "-p", f"127.0.0.1:{port}:{port}"),
            *("-v", f"{self.data}:/data:ro", SERVER_IMAGE, *argv),
        )
        self._fail_if_exited(self.server_name, "at start")

    def server_transcribe(self) -> None:
        """`/ready`, a transcription with the openai client, then SIGTERM: the server must drain and exit 0."""
        try:
            base_url = f"http://127.0.0.1:{self.server_port}"
            self._wait_ready(self.server_name, base_url)
            text = transcribe(base_url, self.data / "clip.wav")
            say(f"    transcription of the clip by the tiny random model: {text!r}")
            self._stop_drained(self.server_name)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Saves the server's log and removes its container, whatever happened: nothing is left running."""
        if self.server_name is None:
            return
        log = self.podman.run("logs", self.server_name, check=False)
        (self.podman.logs_dir / "smoke-serve.log").write_text(log.stdout + log.stderr)
        self.podman.run("rm", "-f", self.server_name, check=False)
        self.server_name = None

    def _fail_if_exited(self, name: str, when: str) -> None:
        state = self.podman.run(
            "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", name
        ).stdout.split()
        if state[0] != "true":
            logs = self.podman.run("logs", name, check=False)
            raise StepFailed(
                f"the container exited ({state[1]}) {when}:\n{(logs.stdout + logs.stderr)[-3000:]}"
            )

    def _wait_ready(self, name: str, base_url: str) -> None:
        import httpx

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self._fail_if_exited(name, "before the server was ready")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/ready", timeout=5).status_code == 200:
                    return
            time.sleep(1)
        raise StepFailed(f"{base_url}/ready did not answer 200 within {self.timeout:.0f} s")

    def _stop_drained(self, name: str) -> None:
        """SIGTERM must reach the server through tini and end it cleanly, well before podman's SIGKILL."""
        grace = 30
        start = time.monotonic()
        self.podman.run("stop", "-t", str(grace), name, timeout=grace + 30)
        took = time.monotonic() - start
        code = self.podman.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        if code != "0":
            hint = " (killed: SIGTERM did not end it)" if code == "137" else ""
            raise StepFailed(f"after SIGTERM the server exited {code}{hint}, expected 0, in {took:.0f} s")
        say(f"    SIGTERM: the server drained and exited 0 in {took:.1f} s")


def _has_logged_a_step(metrics_jsonl: Path) -> bool:
    try:
        return bool(metrics_jsonl.read_text().strip())
    except FileNotFoundError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transcribe(base_url: str, clip: Path) -> str:
    """Transcribes `clip` through the server with the real openai client, as a user's program would."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key=os.environ.get("SAWT_API_KEY", "none"), max_retries=0)
    model = client.models.list().data[0].id
    with clip.open("rb") as f:
        result = client.audio.transcriptions.create(model=model, file=f, response_format="json")
    if not isinstance(result.text, str):
        raise StepFailed(f"the transcription response has no text: {result!r}")
    return result.text
