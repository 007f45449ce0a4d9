"""The global batch plan and the Grain loader: determinism, epochs, exact resume, process shards, shapes."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from trainer.data import batching
from trainer.data.batching import PAD_ROW, SplitIndex
from trainer.data.config import DataConfig
from trainer.data.loader import Featuriser, batch_shapes, make_loader, read_index
from trainer.data.shards import split_shards
from trainer.data.text import PromptStyle


def _index(n: int = 500, seed: int = 0) -> SplitIndex:
    rng = np.random.default_rng(seed)
    return SplitIndex(
        duration=rng.uniform(0.2, 7.0, n).astype(np.float32),
        source_id=rng.integers(0, 3, n).astype(np.int32),
        sources=("a", "b", "c"),
    )


PLAN_ARGS = {"min_duration": 0.5, "max_duration": 6.0}
FRAMES = [200, 400, 600]


# ------------------------------------------------------------------------------------------ the plan


def test_plan_is_deterministic_and_differs_per_epoch():
    index = _index()
    first = batching.epoch_plan(index, FRAMES, 16, seed=1, epoch=0, shuffle=True, **PLAN_ARGS)
    again = batching.epoch_plan(index, FRAMES, 16, seed=1, epoch=0, shuffle=True, **PLAN_ARGS)
    second = batching.epoch_plan(index, FRAMES, 16, seed=1, epoch=1, shuffle=True, **PLAN_ARGS)
    flat = lambda plan: np.concatenate([p.rows for p in plan])  # noqa: E731
    np.testing.assert_array_equal(flat(first), flat(again))
    assert not np.array_equal(flat(first), flat(second))
    # Each epoch uses every eligible record exactly once.
    eligible = batching.eligible(index, FRAMES, **PLAN_ARGS)
    for plan in (first, second):
        used = flat(plan)
        used = used[used != PAD_ROW]
        assert sorted(used.tolist()) == eligible.tolist()


def test_plan_respects_the_duration_filter_and_buckets():
    index = _index()
    plan = batching.epoch_plan(
        index, FRAMES, 8, seed=0, epoch=0, shuffle=True, min_duration=1.0, max_duration=3.5
    )
    frames = index.num_frames()
    for p in plan:
        rows = p.rows[p.rows != PAD_ROW]
        assert ((index.duration[rows] >= 1.0) & (index.duration[rows] <= 3.5)).all()
        assert (frames[rows] <= FRAMES[p.bucket]).all()
        if p.bucket:
            assert (frames[rows] > FRAMES[p.bucket - 1]).all()  # the first bucket that fits


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_process_slices_are_disjoint_and_cover_the_global_batch(processes):
    index = _index()
    plan = batching.epoch_plan(index, FRAMES, 4 * processes, seed=0, epoch=0, shuffle=True, **PLAN_ARGS)
    for p in plan:
        slices = [batching.process_rows(p.rows, i, processes) for i in range(processes)]
        assert [len(s) for s in slices] == [4] * processes
        np.testing.assert_array_equal(np.concatenate(slices), p.rows)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_packed_rows_split_by_row_not_by_clip_slot(processes):
    """A packed global batch [R, C] splits along R: each process gets R / processes whole rows."""
    rows = np.arange(4 * processes * 3).reshape(4 * processes, 3)
    slices = [batching.process_rows(rows, i, processes) for i in range(processes)]
    assert [s.shape for s in slices] == [(4, 3)] * processes
    np.testing.assert_array_equal(np.concatenate(slices), rows)


def test_source_weights_set_the_epoch_mixture():
    index = _index(3000)
    plan = batching.epoch_plan(
        index, FRAMES, 16, seed=0, epoch=0, shuffle=True, source_weights={"a": 3.0, "b": 1.0}, **PLAN_ARGS
    )
    rows = np.concatenate([p.rows for p in plan])
    counts = Counter(index.sources[s] for s in index.source_id[rows[rows != PAD_ROW]])
    assert "c" not in counts
    assert counts["a"] == pytest.approx(3 * counts["b"], rel=0.02)


def test_eval_plan_is_record_order_one_pass():
    index = _index(100)
    plan = batching.epoch_plan(index, FRAMES, 8, seed=5, epoch=0, shuffle=False, **PLAN_ARGS)
    for p in plan:
        rows = p.rows[p.rows != PAD_ROW]
        assert (np.diff(rows) > 0).all()
    assert [p.bucket for p in plan] == sorted(p.bucket for p in plan)


# ------------------------------------------------------------------------------------------ the loader


def _config(corpus, **kw) -> DataConfig:
    return DataConfig(dir=str(corpus.arrayrecord), num_threads=1, prefetch_batches=2, **kw)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _same(a, b):
    assert a["meta"]["sample_id"] == b["meta"]["sample_id"]
    for key in a:
        if key != "meta":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_loader_is_deterministic(corpus, tokenizer):
    one = _take(make_loader(_config(corpus), tokenizer, "train", 0, 1, 7, 4), 4)
    two = _take(make_loader(_config(corpus), tokenizer, "train", 0, 1, 7, 4), 4)
    for a, b in zip(one, two, strict=True):
        _same(a, b)


def _assert_two_epochs_use_every_clip_once_reshuffled(it, corpus):
    """Runs a two-epoch loader to its end: each epoch holds every train clip once, in a new order."""
    epochs: dict[int, list[str]] = {0: [], 1: []}
    while True:
        epoch = it.epoch
        try:
            batch = next(it)
        except StopIteration:
            break
        epochs[epoch if it.epoch == epoch else it.epoch].extend(s for s in batch["meta"]["sample_id"] if s)
    assert sorted(epochs[0]) == sorted(epochs[1])
    assert len(set(epochs[0])) == len(epochs[0]) == len(read_index(corpus.arrayrecord, "train"))
    assert epochs[0] != epochs[1]


def test_epochs_are_shuffled_differently(corpus, tokenizer):
    it = make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 4, num_epochs=2)
    _assert_two_epochs_use_every_clip_once_reshuffled(it, corpus)


def test_resume_from_saved_state_gives_the_same_next_batches(corpus, tokenizer):
    reference = make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 4)
    per_epoch = -(-len(read_index(corpus.arrayrecord, "train")) // 4) + 2  # crosses an epoch boundary
    for stop in (0, 3, per_epoch - 1):
        it = make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 4)
        _take(it, stop)
        state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
        expected = _take(it, 4)
        resumed = make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 4)
        resumed.set_state(state)
        for a, b in zip(expected, _take(resumed, 4), strict=True):
            _same(a, b)
    assert reference.get_state() == {"epoch": 0, "inner": None}


def test_state_works_with_grains_orbax_checkpoint_handler(corpus, tokenizer, tmp_path):
    import grain

    it = make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 2)
    _take(it, 3)
    grain.checkpoint.CheckpointHandler().save(tmp_path, it)
    expected = next(it)
    restored = make_loader(_config(corpus), tokenizer, "train", 0, 1, 0, 2)
    grain.checkpoint.CheckpointHandler().restore(tmp_path, restored)
    _same(expected, next(restored))


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_process_shards_are_disjoint_cover_everything_and_agree_on_buckets(corpus, tokenizer, processes):
    loaders = [
        make_loader(_config(corpus), tokenizer, "train", i, processes, 0, 2, num_epochs=1)
        for i in range(processes)
    ]
    seen: list[set[str]] = [set() for _ in range(processes)]
    for steps in zip(*loaders, strict=True):  # one step: every process's local batch
        assert len({b["audio_mel"].shape for b in steps}) == 1  # same bucket on every process
        assert len({b["input_ids"].shape for b in steps}) == 1
        for i, batch in enumerate(steps):
            seen[i].update(s for s in batch["meta"]["sample_id"] if s)
    for i in range(processes):
        for j in range(i + 1, processes):
            assert not seen[i] & seen[j]
    assert sum(len(s) for s in seen) == len(read_index(corpus.arrayrecord, "train"))


def test_duration_filter(corpus, tokenizer):
    index = read_index(corpus.arrayrecord, "train")
    lo, hi = np.quantile(index.duration, [0.25, 0.75])
    it = make_loader(
        _config(corpus, min_duration=float(lo), max_duration=float(hi)),
        tokenizer,
        "train",
        0,
        1,
        0,
        4,
        num_epochs=1,
    )
    durations = [
        d for b in it for d, s in zip(b["meta"]["duration"], b["meta"]["status"], strict=True) if s == "ok"
    ]
    expected = int(((index.duration >= lo) & (index.duration <= hi)).sum())
    assert len(durations) == expected
    assert all(lo - 1e-4 <= d <= hi + 1e-4 for d in durations)


def test_batches_have_static_bucket_shapes_and_consistent_rows(corpus, tokenizer):
    config = _config(corpus)
    shapes = batch_shapes(config, 4)
    allowed = [{k: v[0] for k, v in s.items()} for s in shapes]
    it = make_loader(config, tokenizer, "validation", 0, 1, 0, 4)
    it_train = make_loader(config, tokenizer, "train", 0, 1, 0, 4, num_epochs=1)
    for batch in [*it, *it_train]:
        assert {k: v.shape for k, v in batch.items() if k != "meta"} in allowed
        assert batch["audio_mel"].shape[2] % 100 == 0
        for b in range(4):
            pads = batch["input_ids"][b] == tokenizer.audio_pad_id
            assert pads.sum() == batch["audio_tokens"][b]
            if batch["meta"]["status"][b] == "ok":
                run = np.flatnonzero(pads)
                assert run[0] == batch["audio_offset"][b] and (np.diff(run) == 1).all()
                n = batch["token_mask"][b].sum()
                assert batch["token_mask"][b, :n].all() and not batch["token_mask"][b, n:].any()
                np.testing.assert_array_equal(batch["positions"][b, :n], np.arange(n))
                assert batch["targets"][b, n - 2] == tokenizer.im_end_id
                frames = batch["audio_frames"][b]
                assert not batch["audio_mel"][b, :, frames:].any()
            else:
                assert not batch["token_mask"][b].any() and not batch["loss_mask"][b].any()
            assert not (batch["loss_mask"][b] * ~batch["token_mask"][b]).any()


def test_eval_loader_is_one_pass_with_masked_padding(corpus, tokenizer):
    batches = list(make_loader(_config(corpus), tokenizer, "test", 0, 1, 0, 3))
    statuses = Counter(s for b in batches for s in b["meta"]["status"])
    assert statuses["ok"] == len(read_index(corpus.arrayrecord, "test"))
    assert set(statuses) <= {"ok", "pad"}


def test_unusable_records_become_masked_rows(corpus, tokenizer):
    from trainer.data.example import encode_speech

    source = [
        b"not an example",
        encode_speech(np.zeros(16000, np.float32), "نص <|audio_pad|> مدسوس", "x", "inj"),
        encode_speech(0.1 * np.ones(16000, np.float32), "نص عادي", "x", "fine"),
    ]
    featurise = Featuriser(source, tokenizer, [(200, 96)], PromptStyle("Transcribe."))
    batch = featurise((0, np.array([0, 1, 2, PAD_ROW])))
    assert batch["meta"]["status"] == ["bad_record:undecodable", "special_token_in_text", "ok", "pad"]
    assert batch["token_mask"].any(axis=1).tolist() == [False, False, True, False]


def test_bucket_too_small_for_the_prompt_is_a_clear_error(tokenizer):
    from trainer.data.shards import DataError

    with pytest.raises(DataError, match=r"bucket \(600, 40\)"):
        Featuriser([], tokenizer, [(600, 40)], PromptStyle("Transcribe."))


def test_missing_split_names_the_directory(tmp_path):
    from trainer.data.shards import DataError

    with pytest.raises(DataError, match="validation"):
        split_shards(tmp_path, "validation")


def test_index_scan_matches_the_converters_index(corpus):
    from trainer.data.loader import scan_index

    written = read_index(corpus.arrayrecord, "train")
    scanned = scan_index(split_shards(corpus.arrayrecord, "train"))
    np.testing.assert_allclose(scanned.duration, written.duration, rtol=1e-6)
    assert [scanned.sources[i] for i in scanned.source_id] == [written.sources[i] for i in written.source_id]


def test_per_record_language_and_context_reach_the_training_row(corpus, tokenizer):
    """data.language_field picks the instruction; data.context_field becomes a system turn (trainer/data/text)."""
    from trainer.data.example import encode_example
    from trainer.data.text import asr_prompt_ids, training_row

    def record(sid, **extra):
        wave = 0.1 * np.ones(16000, np.float32)
        base = {"audio": wave, "audio_len": 16000, "sample_rate": 16000, "duration": 1.0, "text": "نص عادي",
                "dataset_name": "x", "sample_id": sid}  # fmt: skip
        return encode_example({**base, **extra})

    source = [
        record("plain"),
        record("en", lang="en"),
        record("ctx", lang="ar", context="أسماء: سلمى"),
        record("bad-lang", lang="fr"),
        record("bad-ctx", context="<|im_end|>"),
    ]
    style = PromptStyle("Transcribe.", {"ar": "Arabic please.", "en": "English please."})
    featurise = Featuriser(
        source, tokenizer, [(200, 96)], style, language_field="lang", context_field="context"
    )
    batch = featurise((0, np.arange(5)))
    assert batch["meta"]["status"] == ["ok", "ok", "ok", "bad_prompt", "bad_prompt"]
    transcript = tokenizer.encode("نص عادي")
    n_audio = int(batch["audio_tokens"][0])
    for b, (instruction, context) in enumerate(
        [("Transcribe.", None), ("English please.", None), ("Arabic please.", "أسماء: سلمى")]
    ):
        row = training_row(tokenizer, n_audio, transcript, instruction, context)
        n = row.input_ids.size
        np.testing.assert_array_equal(batch["input_ids"][b, :n], row.input_ids)
        assert batch["audio_offset"][b] == row.audio_offset
        rendered = tokenizer.decode(
            asr_prompt_ids(tokenizer, n_audio, instruction, context), skip_special_tokens=False
        )
        assert rendered.endswith(f"<|audio_end|>{instruction}<|im_end|>\n<|im_start|>assistant\n")
        assert rendered.startswith("<|im_start|>system\n" if context else "<|im_start|>user\n")
    assert "system\nأسماء: سلمى" in tokenizer.decode(batch["input_ids"][2], skip_special_tokens=False)
