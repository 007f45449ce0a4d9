"""`sawt data synth`: the sentences, the split plan (held-out sentences and voices), the shards' schema."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tools.data import synth
from trainer.data.example import decode_example, decode_speech
from trainer.data.tfrecord import iter_tfrecord

SCHEMA = {
    "audio": np.ndarray,
    "audio_len": np.ndarray,
    "sample_rate": np.ndarray,
    "duration": np.ndarray,
    "text": list,
    "dataset_name": list,
    "sample_id": list,
}


def test_sentences_file_is_several_hundred_distinct_sentences_in_genres():
    sentences = synth.read_sentences()
    assert len(sentences) >= 400
    assert len({s.text for s in sentences}) == len(sentences)
    genres = Counter(s.genre for s in sentences)
    assert len(genres) >= 2 and min(genres.values()) >= 50
    assert any(ch.isdigit() for s in sentences for ch in s.text)
    assert all(any("\u0600" <= ch <= "\u06ff" for ch in s.text) for s in sentences)


def test_split_plan_holds_out_sentences_and_voices():
    specs = synth.plan_clips(400, seed=11)
    assert len(specs) == 400
    by_split = {s: [c for c in specs if c.split == s] for s in synth.SPLITS}
    text = {s: {c.sentence.text for c in clips} for s, clips in by_split.items()}
    assert not text["test"] & (text["train"] | text["validation"])
    assert not text["validation"] & text["train"]
    test_only = set(synth.TEST_ONLY_VARIANTS)
    assert not test_only & {c.variant for c in by_split["train"] + by_split["validation"]}
    assert len({c.variant for c in specs}) >= 8
    assert len({c.sample_id for c in specs}) == 400
    assert synth.plan_clips(400, seed=11) == specs
    assert synth.plan_clips(400, seed=12) != specs


def test_composed_genres_match_their_generator():
    from tools.data.corpus import compose

    current = compose.SENTENCES_FILE.read_text(encoding="utf-8")
    assert compose.render(current) == current, (
        "run `python -m tools.data.corpus.compose` after editing compose.py"
    )
    genres = Counter(s.genre for s in synth.read_sentences())
    assert all(genres[g] == compose.SENTENCES_PER_GENRE for g in compose.GENRES)


def test_held_out_sentences_are_new_but_their_words_are_heard_in_train():
    sentences = synth.read_sentences()
    by_split = synth.split_sentences(sentences, seed=0)
    train_words = {w for s in by_split["train"] for w in synth._words(s.text)}
    for split in ("validation", "test"):
        held_out = by_split[split]
        assert held_out and not {s.text for s in held_out} & {s.text for s in by_split["train"]}
        assert all(set(synth._words(s.text)) <= train_words for s in held_out), split
    # The composed genres fill their quotas, train-only genres stay in train; every sentence lands in one split.
    assert sorted(s.index for split in by_split.values() for s in split) == list(range(len(sentences)))
    assert {s.genre for s in sentences if s.train_only} == {"daily", "news", "facts"}
    assert not any(s.train_only for split in ("validation", "test") for s in by_split[split])
    test_genres = Counter(s.genre for s in by_split["test"])
    assert all(
        test_genres[g] == round(synth.HELD_OUT_FRACTION["test"] * 250)
        for g in ("errands", "weather", "timetable")
    )


def _records(directory):
    return [payload for shard in sorted(directory.glob("*.tfrecord")) for _, payload in iter_tfrecord(shard)]


def test_shards_have_the_seed_schema(corpus):
    total = 0
    sources = set()
    for split in synth.SPLITS:
        records = _records(corpus.tfrecord / split)
        assert records, split
        total += len(records)
        for payload in records:
            features = decode_example(payload)
            assert set(features) == set(SCHEMA)
            for name, kind in SCHEMA.items():
                assert isinstance(features[name], kind), name
            record = decode_speech(payload)
            assert record.sample_rate == 16000 and record.audio.dtype == np.float32
            assert record.audio_len == record.audio.size
            assert record.duration == pytest.approx(record.audio.size / 16000, rel=1e-6)
            assert 0.5 < record.duration <= synth.MAX_SECONDS + 0.01
            assert 0.05 < np.abs(record.audio).max() <= 1.0
            assert record.sample_id.startswith(f"synth3-{split}-")
            sources.add(record.dataset_name)
    assert total == 36
    assert len(sources) >= 2


def test_test_split_sentences_are_not_spoken_in_train(corpus):
    def texts(split):
        return {decode_speech(p).text for p in _records(corpus.tfrecord / split)}

    assert not texts("test") & (texts("train") | texts("validation"))


def test_synth_is_deterministic_and_refuses_to_overwrite(tmp_path):
    one = synth.synthesise(tmp_path / "a", 6, seed=5, workers=2, log=lambda *_: None)
    two = synth.synthesise(tmp_path / "b", 6, seed=5, workers=1, log=lambda *_: None)
    assert one["splits"] == two["splits"]
    for split in synth.SPLITS:
        assert _records(tmp_path / "a" / split) == _records(tmp_path / "b" / split)
    assert (tmp_path / "a/tokenizer/tokenizer.json").read_bytes() == (
        tmp_path / "b/tokenizer/tokenizer.json"
    ).read_bytes()
    with pytest.raises(FileExistsError, match="already holds"):
        synth.synthesise(tmp_path / "a", 6, seed=5, log=lambda *_: None)
