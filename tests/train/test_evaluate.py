"""Eval's generation budget follows the bucket's audio, and hypotheses cut at it are counted.

The backend is a stand-in whose ``generate`` records the budget it was given and returns chosen ids: what
is under test is `trainer.evaluate.evaluate`'s bookkeeping (the real generate path runs in the train
smoke tests and in the release journey). The eval batch size is checked through the real run loop with
the stand-in backend of tests/train/standin.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from train import standin

from core.configlib import ConfigError
from trainer.config import load_experiment
from trainer.distributed import build_mesh
from trainer.evaluate import evaluate
from trainer.train import run

ROWS, WIDTH, SECONDS = 2, 12, 30


def _batch() -> dict:
    ids = np.arange(1, WIDTH + 1, dtype=np.int32)[None].repeat(ROWS, axis=0)
    loss = np.zeros((ROWS, WIDTH), np.float32)
    loss[:, 6:10] = 1.0  # prompt = the first 7 tokens
    return {
        "input_ids": ids,
        "token_mask": np.ones((ROWS, WIDTH), bool),
        "positions": np.arange(WIDTH, dtype=np.int32)[None].repeat(ROWS, axis=0),
        "loss_mask": loss,
        "targets": np.roll(ids, -1, axis=1),
        "audio_mel": np.zeros((ROWS, 8, SECONDS * 100), np.float32),  # a 30 s bucket: 100 frames/s
        "meta": {"text": ["أ ب", "ج د"], "dataset_name": ["x", "x"]},
    }


def test_budget_follows_the_bucket_and_cut_hypotheses_are_counted():
    cfg = load_experiment("tiny", ["eval.max_batches=1"])
    asked: list[int] = []

    def max_new_tokens_for(seconds: float) -> int:
        return 7 * int(seconds)

    def generate(params, batch, budget):
        asked.append(budget)
        out = np.full((ROWS, budget), 5, np.int32)  # row 0 never stops: cut at its budget
        out[1, 2:] = -1  # row 1 stopped after two tokens
        return out

    backend = SimpleNamespace(
        make_data=lambda split, pi, pc, rows: iter([_batch()]),
        generate=generate,
        detokenize=lambda ids: " ".join("ب" for _ in ids),
        max_new_tokens_for=max_new_tokens_for,
    )
    mesh = build_mesh(cfg.mesh, jax.devices()[:1])
    result = evaluate(cfg.eval, backend, None, mesh, 0, 1, ROWS)
    assert asked == [7 * SECONDS]
    assert result["hypotheses"] == 2 and result["cut"] == 1


def test_without_a_duration_budget_the_fixed_one_applies():
    cfg = load_experiment("tiny", ["eval.max_batches=1", "eval.max_new_tokens=9"])
    asked = []

    def generate(params, batch, budget):
        asked.append(budget)
        out = np.full((ROWS, budget), -1, np.int32)
        out[:, 0] = 5
        return out

    backend = SimpleNamespace(
        make_data=lambda *a: iter([_batch()]),
        generate=generate,
        detokenize=lambda ids: "ب",
        max_new_tokens_for=None,
    )
    result = evaluate(cfg.eval, backend, None, build_mesh(cfg.mesh, jax.devices()[:1]), 0, 1, ROWS)
    assert asked == [9] and result["cut"] == 0


def _rows_asked(tmp_path, overrides: list[str]) -> dict[str, int]:
    """Rows per process that a real (stand-in backed) training run asks each split's loader for."""
    cfg = load_experiment("tiny", ["train.steps=1", "metrics.port=0", "eval.max_batches=1", *overrides])
    backend = standin.backend(cfg)
    asked: dict[str, int] = {}
    make_data = backend.make_data

    def recording(split, pi, pc, rows):
        asked[split] = rows
        return make_data(split, pi, pc, rows)

    backend.make_data = recording
    assert run(cfg, tmp_path, backend) == 0
    return asked


def test_eval_batch_size_sets_the_eval_rows_and_defaults_to_the_train_batch(tmp_path):
    assert _rows_asked(tmp_path / "a", ["train.global_batch_size=8", "eval.batch_size=24"]) == {
        "train": 8,
        "validation": 24,
    }
    assert _rows_asked(tmp_path / "b", ["train.global_batch_size=8"]) == {"train": 8, "validation": 8}


def test_an_eval_batch_that_does_not_split_over_the_batch_axes_is_refused(tmp_path):
    assert len(jax.devices()) == 8  # tests/conftest.py: the batch axes span 8 CPU devices
    with pytest.raises(ConfigError, match=r"eval\.batch_size=12 does not split over the 8 devices"):
        _rows_asked(tmp_path, ["train.global_batch_size=8", "eval.batch_size=12"])
