"""Silence-aware cuts of long audio (trainer/data/silence.py) and their stitching (trainer/data/longform.py).

The signals are built so that the truth is known: "words" are bursts of noise at known times, with the short
energy dips real words have (stop closures), separated by pauses with a noise floor. A stand-in recogniser
hears every word wholly inside a window and garbles one cut by the window's edge, as a real model does; the
stitched text is then compared with the words spoken. One test runs on real espeak-ng speech.
"""

from __future__ import annotations

import itertools
import subprocess

import numpy as np
import pytest

from trainer.data.audio_io import decode_audio
from trainer.data.longform import stitch_windows, window_bounds
from trainer.data.silence import Window, fixed_windows, plan_windows, segment_spans

SR = 16_000


def _speech(word_spans: list[tuple[float, float]], total_s: float, seed: int = 0, floor: float = 3e-3):
    """Noise "words" over [start, end) seconds; each word has two 40 ms closures at -14 dB inside it."""
    rng = np.random.default_rng(seed)
    wave = floor * rng.standard_normal(int(total_s * SR))
    for start, end in word_spans:
        s, e = int(start * SR), int(end * SR)
        burst = 0.3 * rng.standard_normal(e - s)
        for frac in (0.33, 0.66):  # closures: short dips, not pauses
            c = s + int(frac * (e - s)) - s
            burst[c : c + int(0.04 * SR)] *= 0.2
        wave[s:e] += burst
    return wave.astype(np.float32)


def _layout(seed: int, total_s: float, pause_every: tuple[float, float] = (2.0, 3.5)):
    """Words of 0.2-0.6 s with 60-120 ms gaps (inside a phrase: not pauses), and a 0.4-1.0 s pause after
    every phrase of 2-3.5 s (so any 5 s of audio holds a whole pause)."""
    rng = np.random.default_rng(seed)
    words, t = [], 0.3
    phrase_end = t + rng.uniform(*pause_every)
    while True:
        length = rng.uniform(0.2, 0.6)
        if t + length > total_s - 0.3:
            break
        words.append((t, t + length))
        t += length
        if t > phrase_end:
            t += rng.uniform(0.4, 1.0)
            phrase_end = t + rng.uniform(*pause_every)
        else:
            t += rng.uniform(0.06, 0.12)
    return words


def _recognise(words, window: Window) -> list[str]:
    """What a model hears in a window: the words inside it; a word cut by an edge comes out garbled."""
    lo, hi = window.start / SR, window.end / SR
    out = []
    for i, (s, e) in enumerate(words):
        if s >= lo and e <= hi:
            out.append(f"w{i}")
        elif s < hi and e > lo:
            out.append(f"w{i}~")  # partly heard: wrong
    return out


def _in_pause(words, t: float) -> bool:
    return all(not (s - 0.05 < t < e + 0.05) for s, e in words)


def test_short_audio_is_one_window_and_fixed_mode_matches_fixed_windows():
    wave = _speech([(0.5, 1.0)], 10.0)
    assert plan_windows(wave, 30.0, 4.0) == [Window(0, len(wave))]
    long = _speech(_layout(1, 95.0), 95.0)
    fixed = plan_windows(long, 30.0, 4.0, cut="fixed")
    assert fixed == fixed_windows(len(long), 30.0, 4.0)
    assert [(w.start, w.end) for w in fixed] == window_bounds(len(long), 30.0, 4.0)
    assert [w.overlap for w in fixed] == [0] + [4 * SR] * (len(fixed) - 1)


@pytest.mark.parametrize("seed", range(6))
def test_cuts_land_in_pauses_within_the_window_limit(seed):
    words = _layout(seed, 120.0)
    wave = _speech(words, 120.0, seed)
    windows = plan_windows(wave, 20.0, 3.0, search_s=5.0)
    assert windows[0].start == 0 and windows[-1].end == len(wave)
    for prev, cur in itertools.pairwise(windows):
        assert cur.overlap == 0 and cur.start == prev.end  # every boundary found a pause: no overlap
        assert _in_pause(words, cur.start / SR), cur.start / SR
        assert prev.end - prev.start >= 15 * SR  # cut within the last 5 s of the window
    assert all(w.num_samples <= 20 * SR for w in windows)


def test_no_pause_in_the_search_region_falls_back_to_a_fixed_cut():
    # One phrase runs from 1 s to 40 s without a pause; the next ones have pauses.
    words = _layout(3, 40.0, pause_every=(100.0, 100.0))
    later = [(s + 41.0, e + 41.0) for s, e in _layout(4, 40.0)]
    wave = _speech(words + later, 82.0, seed=3)
    windows = plan_windows(wave, 20.0, 3.0, search_s=5.0)
    # 0-20 s and 17-37 s are inside continuous speech: fixed cuts with 3 s of shared audio.
    assert windows[1] == Window(17 * SR, 37 * SR, 3 * SR)
    assert windows[2].start == 34 * SR and windows[2].overlap == 3 * SR
    # The window starting at 34 s reaches a real pause (40-41 s) within its last 5 s: cut there.
    assert windows[3].overlap == 0 and _in_pause(words + later, windows[3].start / SR)


def test_digital_silence_and_a_quiet_floor_are_both_pauses():
    words = _layout(5, 70.0)
    for floor in (0.0, 1e-2):  # digital silence; a floor ~30 dB below the words
        wave = _speech(words, 70.0, seed=5, floor=floor)
        windows = plan_windows(wave, 20.0, 3.0)
        assert all(w.overlap == 0 for w in windows)
        assert all(_in_pause(words, w.start / SR) for w in windows[1:])


def test_word_internal_dips_are_not_pauses():
    # Words with closures but gaps of only 60-120 ms, i.e. no pause anywhere: every cut is a fixed one.
    words = _layout(6, 60.0, pause_every=(1000.0, 1000.0))
    wave = _speech(words, 60.0, seed=6)
    assert plan_windows(wave, 20.0, 3.0) == fixed_windows(len(wave), 20.0, 3.0)


@pytest.mark.parametrize("seed", range(8))
def test_stitched_silence_windows_lose_and_repeat_no_word(seed):
    words = _layout(100 + seed, 150.0)
    wave = _speech(words, 150.0, seed)
    truth = [f"w{i}" for i in range(len(words))]
    windows = plan_windows(wave, 20.0, 3.0)
    merged, cuts = stitch_windows(windows, [_recognise(words, w) for w in windows], max_overlap=24)
    assert merged == truth
    assert cuts[0] == 0 and cuts == sorted(cuts)
    # Fixed windows cut words, and with a recogniser this clean the overlap merge drops exactly the garbled
    # ones; a real model errs near window edges too, which the WER figures of docs/serving.md compare.
    fixed = fixed_windows(len(wave), 20.0, 3.0)
    fixed_pieces = [_recognise(words, w) for w in fixed]
    assert any(word.endswith("~") for piece in fixed_pieces for word in piece)
    assert stitch_windows(fixed, fixed_pieces, max_overlap=24)[0] == truth
    # Concatenating overlapping windows instead of merging them would repeat words: the overlap matters.
    assert len(stitch_windows([Window(w.start, w.end) for w in fixed], fixed_pieces)[0]) > len(truth)


def test_segment_spans_tile_the_audio():
    words = [*_layout(9, 100.0, pause_every=(100.0, 100.0))[:60], (80.0, 80.5)]
    wave = _speech(words, 100.0, seed=9)
    windows = plan_windows(wave, 20.0, 3.0)
    assert any(w.overlap for w in windows) and any(w.overlap == 0 for w in windows[1:])
    spans = segment_spans(windows)
    assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(len(wave) / SR)
    for (_, end), (start, _), w in zip(spans, spans[1:], windows[1:], strict=False):
        assert end == start  # no gap, no overlap
        # After a pause cut the boundary is the cut; after a fixed cut, the middle of the shared audio.
        assert start == pytest.approx((w.start + w.overlap // 2) / SR)
    assert segment_spans([]) == []


def test_bad_arguments_are_rejected():
    wave = np.zeros(SR * 40, np.float32)
    with pytest.raises(ValueError, match="mono"):
        plan_windows(np.zeros((2, SR)))
    with pytest.raises(ValueError, match="overlap_s"):
        plan_windows(wave, 10.0, 10.0)
    with pytest.raises(ValueError, match="cut must be"):
        plan_windows(wave, cut="vad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="search_s"):
        plan_windows(wave, search_s=-1.0)
    with pytest.raises(ValueError, match="2 windows but 1"):
        stitch_windows([Window(0, 1), Window(1, 2)], [["a"]])


def test_real_speech_cut_between_sentences():
    """espeak-ng Arabic sentences with 0.6 s of silence between them: every cut lies in a silence."""
    sentences = [
        "ذهبت إلى السوق صباحا واشتريت الخبز والحليب",
        "الجو اليوم مشمس والحرارة معتدلة في المدينة",
        "يغادر القطار المحطة في الساعة الثامنة والنصف",
        "اتصل بي صديقي وطلب أن نلتقي بعد الظهر",
    ] * 3
    pieces, silences = [], []
    t = 0
    for k, text in enumerate(sentences):
        proc = subprocess.run(
            ["espeak-ng", "-v", "ar", "-s", "150", "--stdout", text], capture_output=True, check=True
        )
        audio = decode_audio(proc.stdout)
        pieces.append(audio)
        t += len(audio)
        gap = np.zeros(int((0.6 + 0.1 * (k % 3)) * SR), np.float32)
        silences.append((t, t + len(gap)))
        pieces.append(gap)
        t += len(gap)
    wave = np.concatenate(pieces)
    windows = plan_windows(wave, 12.0, 2.0, search_s=5.0)
    assert len(windows) >= 3
    for w in windows[1:]:
        assert w.overlap == 0
        around = wave[w.start - SR // 10 : w.start + SR // 10]
        assert np.max(np.abs(around)) < 1e-3, w.start / SR  # 100 ms of silence on either side
        assert any(lo <= w.start <= hi for lo, hi in silences), w.start / SR
