"""Packed batches: the packer, the packed epoch plan and packed rows from the real loader.

Determinism from (seed, epoch), every clip exactly once per epoch, rows within capacity, exact mid-epoch
resume, one process and two planning the same rows (also in separate interpreters), and packed batch dicts
that the model's placeholder check accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.data.test_loader import _assert_two_epochs_use_every_clip_once_reshuffled, _same, _take
from tests.data.test_loader import _config as loader_config
from trainer.data import batching
from trainer.data.batching import PAD_ROW, SplitIndex
from trainer.data.config import DataConfig
from trainer.data.loader import Featuriser, batch_shapes, make_loader, read_index
from trainer.data.packing import ClipCosts, RowCapacity, pack
from trainer.data.text import PromptStyle
from trainer.model.geometry import encoder_token_count

REPO = Path(__file__).resolve().parents[2]
PLAN_ARGS = {"min_duration": 0.5, "max_duration": 30.0}


def _index(n: int = 3000, seed: int = 0) -> tuple[SplitIndex, ClipCosts]:
    """Seed-like durations (lognormal, mean ~5.5 s, 0.2-31 s so both filters bite) and row lengths."""
    rng = np.random.default_rng(seed)
    duration = np.clip(np.exp(rng.normal(np.log(5.0), 0.6, n)), 0.2, 31.0)
    index = SplitIndex(duration.astype(np.float32), rng.integers(0, 3, n).astype(np.int32), ("a", "b", "c"))
    frames = index.num_frames()
    tokens = 16 + encoder_token_count(frames) + rng.poisson(8 * duration) + 1
    tokens[rng.integers(0, n, 5)] = 900  # a few transcripts too long for any row
    return index, ClipCosts.of(frames, tokens)


CAPACITY = RowCapacity.of_bucket(3000, 704, 16)


def _plan(index, costs, epoch=0, seed=1, global_batch=8, **kw):
    return batching.packed_epoch_plan(
        index, costs, CAPACITY, 4, global_batch, seed=seed, epoch=epoch, **PLAN_ARGS, **kw
    )


def _used(plan) -> np.ndarray:
    rows = np.concatenate([p.rows.reshape(-1) for p in plan.batches])
    return rows[rows != PAD_ROW]


def test_packed_plan_is_deterministic_uses_every_clip_once_and_differs_per_epoch():
    index, costs = _index()
    first, again, second = _plan(index, costs), _plan(index, costs), _plan(index, costs, epoch=1)
    for a, b in zip(first.batches, again.batches, strict=True):
        np.testing.assert_array_equal(a.rows, b.rows)
    assert not np.array_equal(_used(first), _used(second))
    keep = batching.eligible(index, [3000], **PLAN_ARGS)
    fits = keep[costs.fits(CAPACITY)[keep]]
    for plan in (first, second):
        assert sorted(_used(plan).tolist()) == fits.tolist()  # exactly once
        assert plan.dropped == {"text_too_long": int(keep.size - fits.size)} and fits.size < keep.size


def test_packed_rows_stay_within_capacity_and_fill_it():
    index, costs = _index()
    plan = _plan(index, costs)
    for p in plan.batches:
        assert p.bucket == 4 and p.rows.shape == (8, CAPACITY.clips)
        for row in p.rows:
            members = row[row != PAD_ROW]
            assert (row[members.size :] == PAD_ROW).all()  # slots fill from the left
            assert costs.frames[members].sum() <= CAPACITY.frames
            assert costs.chunks[members].sum() <= CAPACITY.chunks
            assert costs.audio_tokens[members].sum() <= CAPACITY.audio_tokens
            assert costs.tokens[members].sum() <= CAPACITY.tokens
    fill = batching.plan_fill(plan.batches, costs, [(500, 192)] * 4 + [(3000, 704)])
    assert fill["token_fill"] > 0.9 and fill["frame_fill"] > 0.9
    assert fill["clips"] == _used(plan).size and fill["steps"] == len(plan.batches)


def test_source_weights_and_duration_filter_apply_to_packed_epochs():
    index, costs = _index()
    plan = batching.packed_epoch_plan(
        index, costs, CAPACITY, 4, 8, seed=0, epoch=0, min_duration=1.0, max_duration=12.0,
        source_weights={"a": 3.0, "b": 1.0},
    )  # fmt: skip
    used = _used(plan)
    assert ((index.duration[used] >= 1.0) & (index.duration[used] <= 12.0)).all()
    counts = Counter(index.sources[s] for s in index.source_id[used])
    assert "c" not in counts and counts["a"] == pytest.approx(3 * counts["b"], rel=0.05)


def test_pack_best_fit_closes_full_rows_and_keeps_every_record():
    frames = np.array([2900, 1500, 50, 3000, 1400])
    costs = ClipCosts.of(frames, 40 + frames // 10)
    order = np.arange(frames.size)
    rows = pack(order, costs, CAPACITY)
    assert sorted(r for row in rows for r in row) == order.tolist()
    # The 50-frame clip tops up the 2900-frame row (the tighter fit), which is then closed; a full-length
    # clip is a row of its own; the last clip joins the half-full row.
    assert sorted(rows) == [[0, 2], [1, 4], [3]]
    assert pack(np.zeros(0, np.int64), costs, CAPACITY) == []


def test_plan_is_identical_in_separate_interpreters():
    """Each host plans alone: two fresh interpreters (different hash seeds) must give the same rows."""
    code = (
        "import hashlib, sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.data.test_packing import _index, _plan;"
        "i, c = _index(); p = _plan(i, c, epoch=3);"
        "h = hashlib.sha256(); [h.update(b.rows.tobytes()) for b in p.batches]; print(h.hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "JAX_PLATFORMS": "cpu"}
        out = subprocess.run(
            [sys.executable, "-c", code, str(REPO)], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    import hashlib

    index, costs = _index()
    here = hashlib.sha256()
    for b in _plan(index, costs, epoch=3).batches:
        here.update(b.rows.tobytes())
    assert digests == {here.hexdigest()}


# ------------------------------------------------------------------------------------------ the loader


def _config(corpus, **kw) -> DataConfig:
    return loader_config(corpus, packing=True, **kw)


def _ids(batch) -> list[str]:
    return [s for s in batch["meta"]["sample_id"] if s]


def test_packed_batches_have_static_shapes_and_consistent_clips(corpus, tokenizer):
    from trainer.model.config import ModelConfig
    from trainer.model.thinker import check_audio_placeholders

    config = _config(corpus, max_clips_per_row=4)
    (shape,) = batch_shapes(config, 3)
    batches = list(make_loader(config, tokenizer, "train", 0, 1, 0, 3, num_epochs=1))
    assert max(len(_ids(b)) for b in batches) > 3  # rows do hold several clips
    for batch in batches:
        assert {k: v.shape for k, v in batch.items() if k != "meta"} == {k: v[0] for k, v in shape.items()}
        check_audio_placeholders(batch, ModelConfig())  # the model accepts every packed row
        for b in range(3):
            seg, mask = batch["segment_ids"][b], batch["token_mask"][b]
            np.testing.assert_array_equal(seg > 0, mask)
            n_clips = int((batch["audio_frames"][b] > 0).sum())
            assert seg.max() == n_clips
            statuses = [batch["meta"]["status"][b * 4 + k] for k in range(4)]
            assert statuses.count("ok") == n_clips
            total = 0
            for k in range(n_clips):
                span = np.flatnonzero(seg == k + 1)
                assert (np.diff(span) == 1).all() and span[0] == total  # contiguous, in order
                np.testing.assert_array_equal(batch["positions"][b, span], np.arange(span.size))
                assert batch["targets"][b, span[-2]] == tokenizer.im_end_id
                assert batch["loss_mask"][b, span[-1]] == 0  # a clip's last token predicts nothing
                total += span.size
            frames = int(batch["audio_frames"][b].sum())
            assert not batch["audio_mel"][b, :, frames:].any()
            if n_clips:
                assert batch["audio_mel"][b, :, frames - 1].any()


def test_packed_epochs_use_every_clip_once_and_reshuffle(corpus, tokenizer):
    it = make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 2, num_epochs=2)
    _assert_two_epochs_use_every_clip_once_reshuffled(it, corpus)


def test_packed_loader_resumes_exactly_mid_epoch(corpus, tokenizer):
    for stop in (0, 2, 7):
        it = make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 2)
        _take(it, stop)
        state = json.loads(json.dumps(it.get_state()))
        expected = _take(it, 3)
        resumed = make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 2)
        resumed.set_state(state)
        for a, b in zip(expected, _take(resumed, 3), strict=True):
            _same(a, b)


def test_one_and_two_processes_plan_the_same_rows(corpus, tokenizer):
    """The global batch of two processes (each its half of the rows) is the single process's batch."""
    one = make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 4, num_epochs=1)
    two = [make_loader(_config(corpus), tokenizer, "train", i, 2, 0, 2, num_epochs=1) for i in range(2)]
    steps = 0
    for whole, *halves in zip(one, *two, strict=True):
        # Each process holds its own half (a packed batch split by clip slots once gave one process all).
        assert [h["input_ids"].shape[0] for h in halves] == [2, 2]
        assert [h["audio_frames"].shape for h in halves] == [(2, whole["audio_frames"].shape[1])] * 2
        for key in whole:
            if key != "meta":
                np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]), key)
        assert whole["meta"]["sample_id"] == [s for h in halves for s in h["meta"]["sample_id"]]
        steps += 1
    assert steps > 1


def test_evaluation_never_packs(corpus, tokenizer):
    batch = next(make_loader(_config(corpus), tokenizer, "validation", 0, 1, 0, 2))
    assert "segment_ids" not in batch and batch["audio_frames"].shape == (2,)


def test_bad_clip_in_a_packed_row_leaves_the_rest_of_the_row_in_place(corpus, tokenizer):
    from trainer.data.example import encode_speech

    wave = 0.1 * np.ones(16000, np.float32)
    source = [
        encode_speech(wave, "نص أول", "x", "one"),
        b"not an example",
        encode_speech(wave, "نص <|audio_pad|> مدسوس", "x", "inj"),
        encode_speech(wave, "نص ثالث", "x", "three"),
    ]
    featurise = Featuriser(source, tokenizer, [(600, 128)], PromptStyle("Transcribe."))
    batch = featurise((0, np.array([[0, 1, 2, 3], [PAD_ROW] * 4])))
    assert batch["meta"]["status"][:4] == ["ok", "bad_record:undecodable", "special_token_in_text", "ok"]
    assert batch["meta"]["row"][:5] == [0, 0, 0, 0, 1]
    np.testing.assert_array_equal(batch["audio_frames"][0], [100, 100, 0, 0])  # the good clips close up
    assert batch["segment_ids"][0].max() == 2 and not batch["token_mask"][1].any()


def test_packing_reads_transcripts_from_an_index_without_them(corpus, tokenizer, tmp_path):
    """A split converted before index.npz held transcripts: the loader scans the records for them."""
    import shutil

    root = tmp_path / "old"
    shutil.copytree(corpus.arrayrecord / "train", root / "train")
    with np.load(root / "train" / "index.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith("text_")}
    np.savez(root / "train" / "index.npz", **arrays)
    assert read_index(root, "train").texts is None
    config = DataConfig(dir=str(root), num_threads=1, packing=True)
    old = [_ids(b) for b in make_loader(config, tokenizer, "train", 0, 1, 0, 2, num_epochs=1)]
    new = [_ids(b) for b in make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 2, num_epochs=1)]
    assert old == new


def test_planned_row_lengths_bound_rows_with_languages_and_contexts(tokenizer):
    """The index holds no per-record language or context: the plan counts the longest instruction and a
    context of the most tokens kept, so a featurised row is never longer than planned."""
    from trainer.data.example import encode_example
    from trainer.data.loader import MAX_CONTEXT_TOKENS, row_tokens
    from trainer.data.text import training_row

    style = PromptStyle("Transcribe.", {"ar": "Arabic please, in full.", "en": "English."})
    texts = ("نص عادي", "نص أطول قليلا من الأول")
    index = SplitIndex(np.array([1.0, 2.5], np.float32), np.zeros(2, np.int32), ("x",), texts)
    plain = row_tokens(index, tokenizer, style)
    bound = row_tokens(index, tokenizer, style, language_field="lang", context_field="context")
    long_context = "كلمة " * (2 * MAX_CONTEXT_TOKENS)
    for i, text in enumerate(texts):
        n_audio = int(encoder_token_count(index.num_frames()[i]))
        transcript = tokenizer.encode(text)
        assert training_row(tokenizer, n_audio, transcript, style.instruction).input_ids.size == plain[i]
        wave = 0.1 * np.ones(int(index.duration[i] * 16000), np.float32)
        rec = encode_example({"audio": wave, "audio_len": wave.size, "sample_rate": 16000, "text": text,
                              "duration": float(index.duration[i]), "dataset_name": "x", "sample_id": f"s{i}",
                              "lang": "ar", "context": long_context})  # fmt: skip
        featurise = Featuriser(
            [rec], tokenizer, [(600, 512)], style, language_field="lang", context_field="context"
        )
        batch = featurise((0, np.array([[0, PAD_ROW]])))
        assert batch["meta"]["status"][0] == "ok"
        assert plain[i] < batch["token_mask"][0].sum() <= bound[i]
