"""Checkpoints, SIGTERM, kill -9 and resume, multi-process runs and dead peers, through real `sawt train`
processes on the stand-in model (tests/train/standin.py). Tiny shapes and few steps: CPU is shared.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from core.fileio import read_jsonl
from trainer.model_checkpoint import read_params

REPO = Path(__file__).resolve().parents[2]
BASE = [
    "train.global_batch_size=8",
    "metrics.port=0",
    "eval.max_batches=1",
    "optimizer.warmup_steps=2",
    "distributed.heartbeat_timeout_seconds=5",
]


def _env(**extra):
    return dict(
        os.environ,
        PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{REPO}",
        JAX_PLATFORMS="cpu",
        TPU_SKIP_MDS_QUERY="1",
        **extra,
    )


def sawt_train(run_dir, *overrides, processes=1, cpu_devices=2, env=None):
    cmd = [
        sys.executable,
        "-m",
        "sawt.cli",
        "train",
        "--config",
        "tiny",
        "--run-dir",
        str(run_dir),
        "--plugin",
        "train.standin",
        "--local-processes",
        str(processes),
        "--cpu-devices",
        str(cpu_devices),
        *BASE,
        *overrides,
    ]
    return subprocess.Popen(
        cmd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def last_step(run_dir):
    steps = [r["step"] for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "loss" in r]
    return steps[-1] if steps else 0


def wait_for(pred, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def final_params(run_dir, step):
    """Host copies of a step's params, read the way the server reads a trainer checkpoint."""
    return read_params(Path(run_dir) / "checkpoints" / str(step) / "params")


def summary(run_dir):
    return json.loads((Path(run_dir) / "summary.json").read_text())


def test_checkpoint_round_trip_and_resume_continues(tmp_path):
    code, out = finish(sawt_train(tmp_path, "train.steps=4", "checkpoint.every=2"))
    assert code == 0, out
    first = summary(tmp_path)
    assert first["final_step"] == 4
    step_dir = tmp_path / "checkpoints" / "4"
    assert (step_dir / "model_config.json").is_file()
    assert json.loads((step_dir / "model_config.json").read_text())["name"] == "standin"
    meta = json.loads((step_dir / "train_meta" / "train_meta.json").read_text())
    assert meta["step"] == 4 and meta["data_states"] == [{"next_batch": 4}]
    assert meta["config"]["train"]["steps"] == 4
    # A finished run, run again, does no more steps and reproduces the same parameters.
    code, out = finish(sawt_train(tmp_path, "train.steps=4", "checkpoint.every=2"))
    assert code == 0, out
    assert "resumed from" in out
    assert summary(tmp_path)["params_sha256"] == first["params_sha256"]
    assert summary(tmp_path)["final_loss"] == first["final_loss"]


def test_sigterm_saves_and_exits_42_then_resume_matches(tmp_path):
    ref = tmp_path / "ref"
    code, out = finish(sawt_train(ref, "train.steps=30", "checkpoint.every=100", "checkpoint.keep_last=1"))
    assert code == 0, out
    run = tmp_path / "run"
    proc = sawt_train(run, "train.steps=30", "checkpoint.every=100", "checkpoint.keep_last=1")
    assert wait_for(lambda: last_step(run) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 42, out
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 3 <= saved[-1] < 30
    code, out = finish(sawt_train(run, "train.steps=30", "checkpoint.every=100", "checkpoint.keep_last=1"))
    assert code == 0, out
    assert summary(run)["params_sha256"] == summary(ref)["params_sha256"]


def test_kill9_at_random_points_resumes_bit_identical(tmp_path):
    """SIGKILL several times (one right after a checkpoint starts, i.e. during an async save)."""
    args = ("train.steps=24", "checkpoint.every=3", "checkpoint.keep_last=2")
    ref = tmp_path / "ref"
    code, out = finish(sawt_train(ref, *args))
    assert code == 0, out
    run = tmp_path / "run"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(3):
        proc = sawt_train(run, *args)
        target = last_step(run) + rng.randint(2, 6)
        if attempt == 1:  # during a save: right after the log line of a checkpoint
            ok = wait_for(
                lambda t=target: any(
                    r.get("event") == "checkpoint" and r["step"] > t - 3
                    for r in read_jsonl(run / "metrics.jsonl")
                ),
                proc,
            )
        else:
            ok = wait_for(lambda t=target: last_step(run) >= t, proc)
        if not ok:
            break  # finished before we could kill it
        proc.kill()
        proc.wait()
        kills += 1
    assert kills >= 2
    code, out = finish(sawt_train(run, *args))
    assert code == 0, out
    assert summary(run)["params_sha256"] == summary(ref)["params_sha256"]


def test_one_process_matches_four_processes(tmp_path):
    args = ("train.steps=3", "checkpoint.every=100")
    one, four = tmp_path / "one", tmp_path / "four"
    code, out = finish(sawt_train(one, *args, processes=1, cpu_devices=4))
    assert code == 0, out
    code, out = finish(sawt_train(four, *args, processes=4, cpu_devices=1))
    assert code == 0, out
    flat_a, flat_b = final_params(one, 3), final_params(four, 3)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_allclose(np.asarray(flat_a[key]), np.asarray(flat_b[key]), rtol=1e-5, atol=1e-6)
    meta = json.loads((four / "checkpoints" / "3" / "train_meta" / "train_meta.json").read_text())
    assert meta["data_states"] == [{"next_batch": 3}] * 4
    assert abs(summary(one)["final_loss"] - summary(four)["final_loss"]) < 1e-5


def test_dead_peer_makes_the_others_exit_nonzero(tmp_path):
    """Two processes joined by hand (no launcher): kill -9 one, the survivor must exit by itself."""
    port = 20000 + os.getpid() % 20000
    procs = []
    for i in range(2):
        env = _env(
            SAWT_COORDINATOR=f"127.0.0.1:{port}",
            SAWT_NUM_PROCESSES="2",
            SAWT_PROCESS_ID=str(i),
        )
        procs.append(
            sawt_train(tmp_path, "train.steps=100000", "checkpoint.every=100000", cpu_devices=1, env=env)
        )
    assert wait_for(lambda: last_step(tmp_path) >= 2, procs[0])
    procs[1].kill()
    code, out = finish(procs[0], timeout=180)
    assert code != 0, out


def test_load_from_a_run_dir_starts_from_its_params(tmp_path):
    """load_from= resolves a run dir to its latest step (resolve_checkpoint) and starts from those params."""
    first = tmp_path / "first"
    code, out = finish(sawt_train(first, "train.steps=3", "checkpoint.every=100"))
    assert code == 0, out
    second = tmp_path / "second"
    code, out = finish(
        sawt_train(
            second,
            "train.steps=1",
            f"load_from={first}",
            "optimizer.learning_rate=1e-12",
            "optimizer.warmup_steps=0",
        )
    )
    assert code == 0, out
    assert "loaded parameters from" in out
    a, b = final_params(first, 3), final_params(second, 1)
    for key in a:
        np.testing.assert_allclose(np.asarray(b[key]), np.asarray(a[key]), rtol=0, atol=1e-6)


def test_a_busy_metrics_port_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out = finish(sawt_train(tmp_path / "run", "train.steps=1", f"metrics.port={port}"))
    assert code == 2, out
    assert f"metrics.port={port}: cannot serve /metrics" in out and "metrics.port=0" in out


def test_a_run_that_hangs_exits_42_saves_nothing_and_resumes_bit_identical(tmp_path):
    """The training data hangs at batch 7 (as a stuck collective would): the watchdog dumps every thread's
    stack, records the hang, exits 42 without a new checkpoint; the resumed run ends as an unbroken one."""
    args = ("train.steps=12", "checkpoint.every=3", "checkpoint.keep_last=5", "eval.every=0")
    ref = tmp_path / "ref"
    code, out = finish(sawt_train(ref, *args))
    assert code == 0, out
    run = tmp_path / "run"
    watchdog = ("watchdog.floor_seconds=2", "watchdog.multiple=3", "watchdog.compile_seconds=240")
    t0 = time.monotonic()
    code, out = finish(sawt_train(run, *args, *watchdog, env=_env(STANDIN_STALL_AT_BATCH="7")))
    assert code == 42, out
    assert time.monotonic() - t0 < 240  # it did not wait for the compile allowance
    assert "watchdog: no progress in step (step 8)" in out and "exiting 42 without saving" in out
    assert 'thread "MainThread"' in out and "in _stall" in out  # the stack shows where it hung
    records = read_jsonl(run / "metrics.jsonl")
    (hang,) = [r for r in records if r.get("event") == "hang"]
    assert hang["phase"] == "step" and hang["step"] == 8 and hang["allowed_seconds"] >= 2
    assert last_step(run) == 7
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [3, 6]  # nothing after the hang
    code, out = finish(sawt_train(run, *args))
    assert code == 0, out
    assert summary(run)["params_sha256"] == summary(ref)["params_sha256"]
    # The hang, the restart and the redone step are in the run's goodput (trainer/goodput.py).
    goodput = summary(run)["goodput"]
    assert 0 < goodput["goodput_ratio"] < 1
    assert goodput["badput_seconds"]["idle"] >= 2  # the hang before the watchdog fired
    assert goodput["badput_seconds"]["restart"] > 0 and goodput["badput_seconds"]["checkpoint_restore"] > 0
    assert goodput["badput_seconds"]["compile"] > 0 and goodput["badput_seconds"]["startup"] > 0
