"""Log-mel parity with the real `transformers.WhisperFeatureExtractor` and the audio token count."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.audio import log_mel, mel_filters, num_frames
from trainer.model.geometry import encoder_token_count


@pytest.fixture(scope="module")
def whisper():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128)


def _reference(extractor, wave: np.ndarray) -> np.ndarray:
    # One clip, padded to itself: what the Qwen3-Omni processor computes per utterance (dossier §6).
    out = extractor(wave, sampling_rate=16000, padding="longest", return_tensors="np")
    return out["input_features"][0]


def _speechlike(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * np.sin(2 * np.pi * 3 * t)))
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("n", [16000, 21930, 16123, 48077, 160 * 7 + 1, 401, 160000])
def test_log_mel_matches_whisper_feature_extractor(whisper, n):
    wave = _speechlike(n, seed=n)
    ours = log_mel(wave)
    ref = _reference(whisper, wave)
    assert ours.dtype == np.float32
    assert ours.shape == (128, n // 160) == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_log_mel_matches_on_real_speech_and_silence(whisper, corpus):
    from array_record.python.array_record_module import ArrayRecordReader

    from trainer.data.example import decode_speech

    shard = sorted((corpus.arrayrecord / "test").glob("*.array_record"))[0]
    reader = ArrayRecordReader(str(shard))
    record = decode_speech(reader.read([0])[0])
    reader.close()
    for wave in (record.audio, np.zeros(3210, np.float32)):
        np.testing.assert_allclose(log_mel(wave), _reference(whisper, wave), atol=1e-3, rtol=0)


def test_log_mel_is_per_clip_and_short_clips_give_no_frames():
    wave = _speechlike(20000, seed=1)
    # A clip's features do not depend on what follows it beyond its own samples (no batch padding).
    assert log_mel(wave[:100]).shape == (128, 0)
    assert num_frames(20000) == log_mel(wave).shape[1] == 125


def test_mel_filters_are_slaney_normalised_triangles():
    filters = mel_filters()
    assert filters.shape == (128, 201)
    assert (filters >= 0).all()
    # Every filter is a single non-empty run of bins (a triangle on the FFT grid).
    for row in filters:
        nonzero = np.flatnonzero(row)
        assert nonzero.size > 0 and nonzero[-1] - nonzero[0] + 1 == nonzero.size


@pytest.mark.parametrize(
    ("frames", "tokens"),
    [(100, 13), (200, 26), (937, 122), (1000, 130), (3000, 390), (0, 0), (1, 1), (8, 1), (9, 2), (99, 13)],
)
def test_encoder_token_count_matches_the_dossier(frames, tokens):
    assert encoder_token_count(frames) == tokens


def test_encoder_token_count_on_arrays_and_other_windows():
    frames = np.array([100, 200, 937], np.int32)
    np.testing.assert_array_equal(encoder_token_count(frames), [13, 26, 122])
    # n_window 100: chunks of 200 frames give 25 tokens (200 -> 100 -> 50 -> 25).
    assert encoder_token_count(200, n_window=100) == 25
    assert encoder_token_count(210, n_window=100) == 27
