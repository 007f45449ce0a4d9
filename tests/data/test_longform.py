"""Long audio is windowed with overlap and the per-window hypotheses stitched back without repeats."""

import itertools

import numpy as np
import pytest

from trainer.data.longform import merge_pair, split_windows, stitch, window_bounds

SR = 16_000


def test_short_audio_is_one_window():
    wave = np.zeros(SR * 10, np.float32)
    windows = split_windows(wave, 30.0, 4.0)
    assert len(windows) == 1 and len(windows[0]) == len(wave)


def test_windows_cover_audio_with_overlap():
    wave = np.arange(SR * 95, dtype=np.float32)
    bounds = window_bounds(len(wave), 30.0, 4.0)
    windows = split_windows(wave, 30.0, 4.0)
    assert len(windows) == len(bounds) == 4  # starts at 0, 26, 52, 78 s
    assert bounds[0][0] == 0 and bounds[-1][1] == len(wave)
    for (_s0, e0), (s1, _) in itertools.pairwise(bounds):
        assert e0 - s1 == 4 * SR  # consecutive windows overlap by exactly 4 s
    for (s, e), w in zip(bounds, windows, strict=True):
        assert len(w) <= 30 * SR
        np.testing.assert_array_equal(w, wave[s:e])


def test_bad_overlap_rejected():
    with pytest.raises(ValueError, match="overlap_s"):
        split_windows(np.zeros(SR), 10.0, 10.0)
    with pytest.raises(ValueError, match="mono"):
        split_windows(np.zeros((2, SR)), 10.0, 1.0)


def test_stitch_texts_drops_repeated_overlap():
    words = [f"w{i}" for i in range(40)]
    # Window hypotheses overlap by a few words; edge words are cut (garbled) as at a real window edge.
    a = " ".join([*words[:15], "w1"])  # garbled last word
    b = " ".join(["x", *words[12:28]])  # garbled first word
    c = " ".join(words[25:])
    assert stitch([a, b, c]) == " ".join(words)


def test_stitch_token_ids():
    ids = list(range(100, 160))
    assert stitch([ids[:25], ids[20:45], ids[40:]]) == ids


def test_stitch_without_shared_run_concatenates():
    assert stitch(["a b c", "d e f"]) == "a b c d e f"
    assert stitch([[1, 2], [], [3]]) == [1, 2, 3]
    assert stitch([]) == ""


def test_merge_pair_respects_max_overlap():
    # The shared run "1 2" lies outside the last 2 items of the left piece: not an overlap.
    assert merge_pair([1, 2, 3, 4], [1, 2, 9], max_overlap=2) == [1, 2, 3, 4, 1, 2, 9]
    assert merge_pair([1, 2, 3, 4], [3, 4, 9], max_overlap=2) == [1, 2, 3, 4, 9]


def test_stitch_rejects_mixed_types():
    with pytest.raises(TypeError):
        stitch(["a", [1]])
