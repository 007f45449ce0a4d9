"""Training on packed batches end to end: real corpus (espeak-ng + `sawt data convert`), real loader, the real
tiny Thinker, `data.packing=true`, a checkpoint mid-epoch and a resume that lands on the same parameters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainer.backend import backend as real_backend
from trainer.config import load_experiment
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


def _cfg(corpus: Path, steps: int):
    return load_experiment(
        "tiny",
        [
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
        ],
    )


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
