"""Where to cut long audio into model windows: in a pause near each window's end, else at a fixed length.

The audio encoder takes at most ``window_s`` seconds per prompt. A fixed cut every ``window_s`` seconds
splits whatever word is being spoken there; both windows then see half a word, and the overlap merge has
to guess. Speech pauses, so instead each window ends at the quietest stretch within its last ``search_s``
seconds (as vLLM's speech-to-text endpoint does), and the next window starts right there, with no overlap:
no word is cut, and the windows' texts simply follow each other. Where that stretch is not quiet (speech
runs through the whole search region), the boundary falls back to the fixed cut with ``overlap_s`` of
shared audio, which the word-level merge (`trainer.data.longform`) reconciles as before.

Pure numpy, no model: `plan_windows` returns the plan and `segment_spans` the time each window accounts
for in the source audio (what ``verbose_json`` segments, srt and vtt report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from trainer.data.audio_io import SAMPLE_RATE

CutMode = Literal["silence", "fixed"]
CUT_MODES: tuple[str, ...] = ("silence", "fixed")

# Energy is measured in 10 ms frames; a pause is a stretch of MIN_PAUSE_S whose mean energy is low. Shorter
# dips (stop-consonant closures inside a word last 30-100 ms) must not count as pauses.
FRAME_S = 0.010
MIN_PAUSE_S = 0.200
DEFAULT_SEARCH_S = 5.0
# Quiet means this far below the recording's speech level (its 95th-percentile frame level), or below an
# absolute floor (digital silence, a muted microphone). 20 dB is well above the dip of a word-internal
# pause and below the noise floor of most recordings with an SNR over 20 dB.
QUIET_BELOW_SPEECH_DB = 20.0
QUIET_FLOOR_DBFS = -60.0
# Stretches within this much of the quietest one count as equally quiet; among them the longest run wins,
# and the cut lands in its middle, as far as possible from the words on either side.
TIE_DB = 3.0
_EPS = 1e-12


@dataclass(frozen=True)
class Window:
    """One model window: samples ``[start, end)`` of the source audio.

    Attributes:
        start: first sample.
        end: one past the last sample.
        overlap: samples this window shares with the previous one: 0 for the first window and after a cut
            in a pause (the texts follow each other), ``overlap_s`` after a fixed cut (the texts overlap and
            are merged).
    """

    start: int
    end: int
    overlap: int = 0

    @property
    def num_samples(self) -> int:
        return self.end - self.start


def plan_windows(
    wave: np.ndarray,
    window_s: float = 30.0,
    overlap_s: float = 4.0,
    *,
    cut: CutMode = "silence",
    search_s: float = DEFAULT_SEARCH_S,
    sample_rate: int = SAMPLE_RATE,
) -> list[Window]:
    """The windows that cover ``wave``, each at most ``window_s`` long.

    Args:
        wave: mono samples ``[T]``.
        window_s: the longest window (the model's audio limit per prompt).
        overlap_s: audio shared by two windows at a fixed cut.
        cut: ``silence`` ends each window in the quietest pause of its last ``search_s`` seconds, falling
            back to a fixed cut where there is none; ``fixed`` cuts every ``window_s - overlap_s`` seconds.
        search_s: how far back from a window's longest end a pause is looked for (capped at half a window).
        sample_rate: samples per second of ``wave``.

    Returns:
        The windows in order; the first starts at 0, the last ends at ``len(wave)``, and each starts where
        the previous ends (minus its ``overlap``). Audio no longer than one window is one window.

    Raises:
        ValueError: for a non-mono wave, a non-positive window, an overlap outside ``[0, window_s)``, a
            negative search span or an unknown cut mode.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"expected mono audio [T], got shape {wave.shape}")
    if cut not in CUT_MODES:
        raise ValueError(f"cut must be one of {', '.join(CUT_MODES)}, got {cut!r}")
    if search_s < 0:
        raise ValueError(f"search_s must not be negative, got {search_s}")
    long = len(wave) > round(window_s * sample_rate)
    finder = _PauseFinder(wave, sample_rate) if cut == "silence" and search_s > 0 and long else None
    return _windows(len(wave), window_s, overlap_s, search_s, finder, sample_rate)


def fixed_windows(
    n_samples: int, window_s: float = 30.0, overlap_s: float = 4.0, sample_rate: int = SAMPLE_RATE
) -> list[Window]:
    """`plan_windows` with fixed cuts, from the length alone: a window every ``window_s - overlap_s``
    seconds, the last one ending at ``n_samples`` (it may be shorter)."""
    return _windows(n_samples, window_s, overlap_s, 0.0, None, sample_rate)


def _windows(
    n: int, window_s: float, overlap_s: float, search_s: float, finder: _PauseFinder | None, sample_rate: int
) -> list[Window]:
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    if not 0 <= overlap_s < window_s:
        raise ValueError(f"overlap_s must be in [0, window_s={window_s}), got {overlap_s}")
    window = round(window_s * sample_rate)
    overlap = round(overlap_s * sample_rate)
    search = min(round(search_s * sample_rate), window // 2)
    windows: list[Window] = []
    start, shared = 0, 0
    while n - start > window:
        limit = start + window
        pause = finder.quietest_pause(limit - search, limit) if finder is not None else None
        if pause is not None:
            windows.append(Window(start, pause, shared))
            start, shared = pause, 0
        else:
            windows.append(Window(start, limit, shared))
            start, shared = limit - overlap, overlap
    windows.append(Window(start, n, shared))
    return windows


def segment_spans(windows: list[Window], sample_rate: int = SAMPLE_RATE) -> list[tuple[float, float]]:
    """(start, end) in seconds of the source audio that each window's text stands for.

    Consecutive spans meet without a gap: at the cut after a pause, and in the middle of the shared audio
    after a fixed cut (the merge keeps the earlier window's words up to the overlap's agreed run).
    """
    if not windows:
        return []
    edges = [windows[0].start]
    for w in windows[1:]:
        edges.append(w.start + w.overlap // 2)
    edges.append(windows[-1].end)
    return [(edges[i] / sample_rate, edges[i + 1] / sample_rate) for i in range(len(windows))]


class _PauseFinder:
    """Smoothed frame energies of one recording, and the quietest pause inside a sample range."""

    def __init__(self, wave: np.ndarray, sample_rate: int):
        self.hop = max(1, round(FRAME_S * sample_rate))
        n_frames = len(wave) // self.hop
        frames = np.asarray(wave[: n_frames * self.hop], np.float64).reshape(n_frames, self.hop)
        energy = np.mean(frames * frames, axis=1)
        self.span = max(1, round(MIN_PAUSE_S / FRAME_S))  # frames per candidate pause
        # level[i]: mean energy (dB) of the stretch of `span` frames starting at frame i.
        kernel = np.ones(self.span) / self.span
        self.level_db = 10 * np.log10(np.convolve(energy, kernel, mode="valid") + _EPS)
        frame_db = 10 * np.log10(energy + _EPS)
        speech_db = float(np.percentile(frame_db, 95)) if n_frames else 0.0
        self.quiet_db = max(speech_db - QUIET_BELOW_SPEECH_DB, QUIET_FLOOR_DBFS)

    def quietest_pause(self, lo: int, hi: int) -> int | None:
        """The sample to cut at: the middle of the quietest pause lying inside ``[lo, hi)``, or None."""
        first = -(-lo // self.hop)  # first stretch starting at or after lo
        last = hi // self.hop - self.span  # last stretch ending at or before hi
        if last < first or first >= len(self.level_db):
            return None
        region = self.level_db[first : last + 1]
        best = float(region.min())
        if best > self.quiet_db:
            return None
        near = region <= best + TIE_DB
        # Runs of near-quietest stretches: the longest (the latest among equals) holds the safest cut.
        edges = np.flatnonzero(np.diff(np.concatenate([[0], near.astype(np.int8), [0]])))
        runs = list(zip(edges[::2], edges[1::2], strict=True))
        run_lo, run_hi = max(runs, key=lambda r: (r[1] - r[0], r[0]))
        # The run covers frames [run_lo, run_hi - 1 + span); its middle is the cut.
        mid_frame = (first + run_lo + first + run_hi - 1 + self.span) / 2
        return int(min(max(round(mid_frame * self.hop), lo + 1), hi))
