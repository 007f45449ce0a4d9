"""Eval's generation budget follows the bucket's audio, and hypotheses cut at it are counted.

The backend is a stand-in whose ``generate`` records the budget it was given and returns chosen ids: what
is under test is `trainer.evaluate.evaluate`'s bookkeeping (the real generate path runs in the train
smoke tests and in the release journey).
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np

from trainer.config import load_experiment
from trainer.distributed import build_mesh
from trainer.evaluate import evaluate

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
