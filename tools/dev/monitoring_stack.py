"""A live monitoring stack on one machine: a real Prometheus scraping a real tiny training run and a real
`sawt serve` under a short load.

Used by the dashboard test (tests/monitoring/test_dashboards_live.py) and by ``make dashboards-png``
(`tools.dev.dashboard_snapshot --live`), so the committed snapshots come from the same run the test checks.

What runs, all on 127.0.0.1 with free ports, under one work directory:

    corpus/        `sawt data synth` (a few espeak-ng clips) + `sawt data convert`
    prometheus/    Prometheus (Debian's /usr/bin/prometheus): 1 s scrapes of both targets, TSDB in data/
    train/         `sawt train --config tiny` for a few dozen steps with eval and checkpoints every
                   ``eval_every`` steps; one bucket with a tight text budget, so the loader also skips a
                   record whose transcript does not fit (``text_too_long``: the bad-records panel has data)
    serve-ckpt/    a random tiny Thinker + the corpus tokenizer (`sawt serve` needs the tokenizer next to it)
    serve.log      `sawt serve` on that checkpoint, driven by the `openai` client (plain and streamed
                   transcriptions of the corpus's test clips) plus a few requests that get 4xx answers

The targets carry the ``pod``/``namespace`` labels that Google Managed Prometheus' PodMonitoring adds on GKE,
so the dashboards' ``{{pod}}`` legends and ``without (process, instance, pod)`` aggregations see what they
see in the cluster.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "sawt-asr"
TRAIN_POD, SERVE_POD, NAMESPACE = "sawt-train-0", "sawt-serve-0", "sawt-live"


class StackError(RuntimeError):
    """A component of the stack failed; the message names it and ends with the tail of its log."""


@dataclass(frozen=True)
class StackConfig:
    """Sizes of the live run (the defaults keep it to a couple of minutes on a shared 2-core machine)."""

    # 20 clips with seed 1: 12 train clips (three full batches of 4), 2 validation clips from two sources.
    clips: int = 20
    seed: int = 1
    train_steps: int = 30
    eval_every: int = 10
    # One bucket (one compiled step). 96 tokens leave room for every train and validation transcript of
    # that corpus but one, which the loader skips as text_too_long (feeding sawt_train_bad_records_total).
    bucket: tuple[int, int] = (600, 96)
    min_load_rounds: int = 6
    startup_timeout_s: float = 420.0


@dataclass
class LiveStack:
    """A finished run whose metrics Prometheus still holds."""

    prometheus_url: str
    start: float  # unix seconds: Prometheus started
    end: float  # unix seconds: the training run and the load are over and scraped
    workdir: Path
    requests: dict[str, int] = field(default_factory=dict)  # load sent: "ok", "stream", "4xx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    # JAX on CPU unless the caller chose otherwise; the repo on the path for `python -m`.
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "PYTHONPATH": path}


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run_checked(argv: list[str], log: Path, what: str, timeout: float) -> None:
    with open(log, "ab") as out:
        try:
            proc = subprocess.run(
                argv, cwd=REPO_ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"{what} took more than {timeout:.0f} s; {log}:\n{_tail(log)}") from None
    if proc.returncode != 0:
        raise StackError(f"{what} exited {proc.returncode}; {log}:\n{_tail(log)}")


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)


def _sawt(*args: str) -> list[str]:
    return [sys.executable, "-m", "sawt", *args]


# ---------------------------------------------------------------------------------------------- parts


def make_corpus(root: Path, clips: int, seed: int) -> tuple[Path, Path]:
    """Synthesises and converts a tiny corpus under ``root``; returns (arrayrecord dir, tokenizer dir)."""
    tfrecord, arrayrecord = root / "tfrecord", root / "arrayrecord"
    log = root.parent / "corpus.log"
    root.mkdir(parents=True, exist_ok=True)
    synth = _sawt("data", "synth", "--out", str(tfrecord), "--n", str(clips), "--seed", str(seed))
    _run_checked([*synth, "--workers", "2"], log, "sawt data synth", 300)
    convert = _sawt("data", "convert", "--src", str(tfrecord), "--dst", str(arrayrecord), "--workers", "1")
    _run_checked(convert, log, "sawt data convert", 300)
    return arrayrecord, tfrecord / "tokenizer"


def make_serving_checkpoint(out: Path, tokenizer_dir: Path) -> Path:
    """A model checkpoint (interface 6) with random tiny-preset weights and ``tokenizer_dir``'s tokenizer."""
    from flax import nnx

    from trainer.config import load_experiment
    from trainer.model.params import param_tree
    from trainer.model.thinker import Thinker
    from trainer.model_checkpoint import save_model_checkpoint

    config = load_experiment("tiny").model
    model = Thinker(config, rngs=nnx.Rngs(0))
    return save_model_checkpoint(out, param_tree(model), config, copy_files_from=tokenizer_dir)


def prometheus_config(targets: dict[str, tuple[str, str]]) -> str:
    """Prometheus YAML scraping each ``job -> (host:port, pod)`` every second."""
    return yaml.safe_dump(
        {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": [addr], "labels": {"pod": pod, "namespace": NAMESPACE}}],
                }
                for job, (addr, pod) in targets.items()
            ],
        },
        sort_keys=False,
    )


@contextlib.contextmanager
def prometheus(workdir: Path, targets: dict[str, tuple[str, str]]) -> Iterator[str]:
    """Runs Prometheus on a free 127.0.0.1 port with its TSDB in ``workdir``; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise StackError("prometheus is not installed (`make setup` installs Debian's package)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(targets))
    port = free_port()
    log = workdir / "prometheus.log"
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _http_ok(url + "/-/ready"), proc, 60, "prometheus", log)
        yield url
    finally:
        _stop(proc)


def start_training(run_dir: Path, data_dir: Path, tokenizer_dir: Path, port: int, cfg: StackConfig):
    """`sawt train --config tiny` with /metrics on ``port``; returns the process (log: RUN_DIR.log)."""
    frames, tokens = cfg.bucket
    overrides = [
        f"data.dir={data_dir}",
        f"tokenizer.dir={tokenizer_dir}",
        f"data.buckets=[[{frames},{tokens}]]",
        f"train.steps={cfg.train_steps}",
        "train.global_batch_size=4",
        "optimizer.warmup_steps=3",
        f"checkpoint.every={cfg.eval_every}",
        f"eval.every={cfg.eval_every}",
        "eval.max_batches=1",
        "eval.max_new_tokens=8",
        "eval.log_examples=1",
        f"metrics.port={port}",
    ]
    argv = _sawt("train", "--config", "tiny", "--run-dir", str(run_dir), "--cpu-devices", "1", *overrides)
    return _spawn(argv, run_dir.with_suffix(".log"))


def start_server(checkpoint: Path, port: int, log: Path):
    """`sawt serve` on ``checkpoint`` (short windows and outputs: a tiny model on a shared CPU)."""
    argv = _sawt(
        "serve", "--checkpoint", str(checkpoint), "--port", str(port), "--model-name", MODEL_NAME,
        "--max-batch", "2", "--max-new-tokens", "8", "--window-s", "8", "--overlap-s", "1",
        "--log-level", "warning",
    )  # fmt: skip
    return _spawn(argv, log)


def speech_clips(data_dir: Path) -> list[bytes]:
    """The corpus's test-split clips as WAV bytes (real espeak-ng speech for the server)."""
    import soundfile as sf
    from array_record.python.array_record_module import ArrayRecordReader

    from trainer.data.example import decode_speech

    clips = []
    for shard in sorted((data_dir / "test").glob("*.array_record")):
        reader = ArrayRecordReader(str(shard))
        try:
            for payload in reader.read_all():
                rec = decode_speech(payload)
                buf = io.BytesIO()
                sf.write(buf, rec.audio, rec.sample_rate, format="WAV", subtype="PCM_16")
                clips.append(buf.getvalue())
        finally:
            reader.close()
    if not clips:
        raise StackError(f"{data_dir}/test: no clips to send to the server")
    return clips


def drive_load(
    url: str, clips: list[bytes], rounds: int, keep_going: Callable[[], bool], max_seconds: float = 600.0
) -> dict[str, int]:
    """Sends rounds of requests through the `openai` client until ``rounds`` are done and not keep_going()
    (or ``max_seconds`` have passed: a hung training run must not keep the load going forever).

    Each round: three plain and one streamed transcription at once (more than the two decode slots, so
    requests queue and get batched), then two requests the server must refuse: an unknown model (404) and a
    file that is not audio (400).
    """
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    sent = {"ok": 0, "stream": 0, "4xx": 0}
    errors: list[BaseException] = []
    finished: list[bytes] = []  # list.append is atomic: the threads need no lock

    def plain(clip: bytes) -> None:
        try:
            client.audio.transcriptions.create(model=MODEL_NAME, file=("clip.wav", clip, "audio/wav"))
            finished.append(clip)
        except BaseException as err:  # reported by the caller's thread
            errors.append(err)

    done, deadline = 0, time.monotonic() + max_seconds
    while done < rounds or (keep_going() and time.monotonic() < deadline):
        clip = clips[done % len(clips)]
        threads = [threading.Thread(target=plain, args=(clips[(done + i) % len(clips)],)) for i in range(3)]
        for thread in threads:
            thread.start()
        stream = client.audio.transcriptions.create(model=MODEL_NAME, file=("clip.wav", clip), stream=True)
        events = list(stream)
        if not events or events[-1].type != "transcript.text.done":
            raise StackError(f"streamed transcription ended without transcript.text.done: {events[-1:]}")
        sent["stream"] += 1
        for thread in threads:
            thread.join()
        if errors:
            raise StackError(f"transcription failed: {errors[0]!r}")
        for model, file in (("no-such-model", clip), (MODEL_NAME, b"this is not audio")):
            try:
                client.audio.transcriptions.create(model=model, file=("x.wav", file))
            except openai.APIStatusError as err:
                if not 400 <= err.status_code < 500:
                    raise StackError(f"expected a 4xx answer, got {err.status_code}") from err
                sent["4xx"] += 1
            else:
                raise StackError(f"the server accepted a bad request (model={model!r})")
        done += 1
        time.sleep(0.5)
    sent["ok"] = len(finished)
    return sent


# ------------------------------------------------------------------------------------------ the stack


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait(pred: Callable[[], bool], proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise StackError(f"{what} exited {proc.returncode} before it was ready; {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} not ready after {timeout:.0f} s; {log}:\n{_tail(log)}")
        time.sleep(1.0)  # like a readiness probe: each poll of /ready is a request the dashboards count


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _query_has_data(prom: str, expr: str) -> bool:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(json.load(resp)["data"]["result"])
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return False


@contextlib.contextmanager
def live_stack(
    workdir: Path, cfg: StackConfig | None = None, say: Callable[[str], None] = lambda _: None
) -> Iterator[LiveStack]:
    """Runs the whole stack in ``workdir``; yields once the run is over, while Prometheus still serves.

    Raises:
        StackError: a component failed to start or exited non-zero (with the tail of its log).
    """
    cfg = cfg or StackConfig()
    workdir.mkdir(parents=True, exist_ok=True)
    say("synthesising and converting the corpus")
    data_dir, tokenizer_dir = make_corpus(workdir / "corpus", cfg.clips, cfg.seed)
    train_port, serve_port = free_port(), free_port()
    targets = {
        "sawt-train": (f"127.0.0.1:{train_port}", TRAIN_POD),
        "sawt-serve": (f"127.0.0.1:{serve_port}", SERVE_POD),
    }
    with prometheus(workdir / "prometheus", targets) as prom:
        start = time.time()
        say(f"prometheus at {prom}; starting the training run and the server")
        procs: list[subprocess.Popen] = []
        try:
            train_log = workdir / "train.log"
            trainer = start_training(workdir / "train", data_dir, tokenizer_dir, train_port, cfg)
            procs.append(trainer)
            checkpoint = workdir / "serve-ckpt"
            ckpt_argv = [sys.executable, "-m", "tools.dev.monitoring_stack", "checkpoint", str(checkpoint)]
            _run_checked([*ckpt_argv, str(tokenizer_dir)], workdir / "checkpoint.log", "checkpoint", 300)
            serve_log = workdir / "serve.log"
            server = start_server(checkpoint, serve_port, serve_log)
            procs.append(server)
            serve_url = f"http://127.0.0.1:{serve_port}"
            ready = lambda: _http_ok(serve_url + "/ready")  # noqa: E731
            _wait(ready, server, cfg.startup_timeout_s, "sawt serve", serve_log)
            say("server ready; sending requests while the training run goes on")
            training = lambda: trainer.poll() is None  # noqa: E731
            clips = speech_clips(data_dir)
            requests = drive_load(serve_url, clips, cfg.min_load_rounds, training, cfg.startup_timeout_s)
            say(f"load done ({requests}); waiting for the training run to finish")
            try:
                code = trainer.wait(cfg.startup_timeout_s)
            except subprocess.TimeoutExpired:
                raise StackError(f"sawt train did not finish; {train_log}:\n{_tail(train_log)}") from None
            if code != 0:
                raise StackError(f"sawt train exited {code}; {train_log}:\n{_tail(train_log)}")
            # The server's last requests must be in Prometheus before the run counts as over.
            refused = f'sum(sawt_http_requests_total{{code=~"4.."}}) >= {requests["4xx"]}'
            _wait(
                lambda: _query_has_data(prom, refused), server, 30, "a scrape of the last requests", serve_log
            )
            time.sleep(2)
            yield LiveStack(prom, start, time.time(), workdir, requests)
        finally:
            for proc in reversed(procs):
                _stop(proc)


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.dev.monitoring_stack checkpoint OUT TOKENIZER_DIR`` (run by `live_stack` in a child, so the
    parent never loads JAX)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "checkpoint":
        print("usage: python -m tools.dev.monitoring_stack checkpoint OUT TOKENIZER_DIR", file=sys.stderr)
        return 2
    print(make_serving_checkpoint(Path(args[1]), Path(args[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
