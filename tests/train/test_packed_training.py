"""Training on packed batches end to end: real corpus (espeak-ng + `sawt data convert`), real loader, the real
tiny Thinker, `data.packing=true`, a checkpoint mid-epoch and a resume that lands on the same parameters, and
two real `sawt train` processes (joined by jax.distributed) training what one process trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.backend import backend as real_backend
from trainer.config import load_experiment
from trainer.model_checkpoint import read_params
from trainer.train import run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sawt.cli import main

    root = tmp_path_factory.mktemp("packed-corpus")
    assert main(["data", "synth", "--out", str(root / "tfrecord"), "--n", "80", "--seed", "5"]) == 0
    assert (
        main(
            ["data", "convert", "--src", str(root / "tfrecord"), "--dst", str(root / "ar"), "--workers", "1"]
        )
        == 0
    )
    return root


def _overrides(corpus: Path, steps: int) -> list[str]:
    return [
        f"data.dir={corpus / 'ar'}",
        f"tokenizer.dir={corpus / 'tfrecord' / 'tokenizer'}",
        "data.packing=true",
        "data.max_clips_per_row=4",
        "data.num_threads=1",
        f"train.steps={steps}",
        "train.global_batch_size=8",
        "checkpoint.every=3",
        "checkpoint.keep_last=3",
        "eval.every=0",
        "eval.max_batches=1",
        "eval.max_new_tokens=4",
        "metrics.port=0",
    ]


def _cfg(corpus: Path, steps: int):
    return load_experiment("tiny", _overrides(corpus, steps))


def test_packed_training_runs_and_resumes_exactly(corpus: Path, tmp_path: Path):
    whole = tmp_path / "whole"
    assert run(_cfg(corpus, 6), whole, real_backend(_cfg(corpus, 6))) == 0
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 6 and all(r["loss"] == r["loss"] for r in steps)  # finite

    first = json.loads((whole / "summary.json").read_text())
    meta = json.loads((whole / "checkpoints" / "3" / "train_meta" / "train_meta.json").read_text())
    (state,) = meta["data_states"]
    assert state["epoch"] == 0 and state["inner"] is not None  # step 3 is inside the first epoch
    # Back to the mid-epoch checkpoint at step 3 (as after a crash), then the same run again.
    shutil.rmtree(whole / "checkpoints" / "6")
    (whole / "summary.json").unlink()
    assert run(_cfg(corpus, 6), whole, real_backend(_cfg(corpus, 6))) == 0
    again = json.loads((whole / "summary.json").read_text())
    assert any(
        json.loads(line).get("event") == "resume"
        for line in (whole / "metrics.jsonl").read_text().splitlines()
    )
    assert again["final_step"] == first["final_step"] == 6
    assert again["params_sha256"] == first["params_sha256"]


@pytest.mark.slow  # two real trainings with their compiles (~6.5 min loaded); tests/data catch the split itself
def test_two_processes_train_the_packed_batches_of_one(corpus: Path, tmp_path: Path):
    """Each process plans the epoch alone and featurises its half of every packed global batch (the [B, C]
    clip-slot arrays included); the two halves, joined across processes, must train what one process trains."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1")
    runs = {}
    for processes, devices in ((1, 2), (2, 1)):
        run_dir = tmp_path / f"p{processes}"
        cmd = [sys.executable, "-m", "sawt.cli", "train", "--config", "tiny", "--run-dir", str(run_dir)]
        cmd += ["--local-processes", str(processes), "--cpu-devices", str(devices)]
        cmd += [*_overrides(corpus, 2), "checkpoint.every=2", "checkpoint.keep_last=1"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[processes] = run_dir
    one, two = (read_params(runs[p] / "checkpoints" / "2" / "params") for p in (1, 2))
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_allclose(np.asarray(one[key]), np.asarray(two[key]), rtol=1e-5, atol=1e-6)
    losses = {}
    for p, d in runs.items():
        records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        losses[p] = [r["loss"] for r in records if "loss" in r]
    assert len(losses[1]) == 2
    np.testing.assert_allclose(losses[1], losses[2], rtol=1e-5)
