"""Long audio: cut into model windows, then stitch the per-window hypotheses back together.

The thinker's audio encoder takes at most ``window_s`` seconds per request (30 s for Qwen3-Omni's ASR
prompt). Rather than truncating, long audio is cut into windows (`trainer.data.silence.plan_windows`): at a
pause near each window's end where there is one, so that no word is cut and the windows' texts follow each
other; elsewhere at a fixed length, with ``overlap_s`` of shared audio. Each window is transcribed on its
own; overlapping hypotheses are merged where they agree. Words cut at a window's edge are unreliable, so
the merge keeps the earlier window's text up to the agreed run and the later window's text after it.

Used by `sawt transcribe` and the server (docs/interfaces.md §9).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, overload

import numpy as np

from trainer.data.audio_io import SAMPLE_RATE
from trainer.data.silence import Window, fixed_windows

DEFAULT_WINDOW_S = 30.0
DEFAULT_OVERLAP_S = 4.0

T = TypeVar("T")


def window_bounds(
    n_samples: int,
    window_s: float = DEFAULT_WINDOW_S,
    overlap_s: float = DEFAULT_OVERLAP_S,
    sample_rate: int = SAMPLE_RATE,
) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` of fixed windows that cover ``n_samples`` (`silence.fixed_windows`).

    Windows are ``window_s`` long and start every ``window_s - overlap_s`` seconds; the last one ends at the
    end of the audio (it may be shorter). Audio no longer than one window is one window.

    Raises:
        ValueError: if ``overlap_s`` is negative or not shorter than ``window_s``.
    """
    return [(w.start, w.end) for w in fixed_windows(n_samples, window_s, overlap_s, sample_rate)]


def split_windows(
    wave: np.ndarray,
    window_s: float = DEFAULT_WINDOW_S,
    overlap_s: float = DEFAULT_OVERLAP_S,
    sample_rate: int = SAMPLE_RATE,
) -> list[np.ndarray]:
    """Cuts a mono waveform into overlapping windows (views, no copies); see `window_bounds` for offsets.

    Args:
        wave: float mono samples ``[T]`` at ``sample_rate``.
        window_s: window length in seconds (the model's maximum audio per request).
        overlap_s: overlap between consecutive windows in seconds.
        sample_rate: samples per second of ``wave``.

    Returns:
        The windows in order; one window when the audio fits in one.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"expected mono audio [T], got shape {wave.shape}")
    return [wave[s:e] for s, e in window_bounds(len(wave), window_s, overlap_s, sample_rate)]


def _longest_common_run(left: Sequence[T], right: Sequence[T]) -> tuple[int, int, int]:
    """(start in left, start in right, length) of the longest contiguous run present in both."""
    best = (0, 0, 0)
    prev = [0] * (len(right) + 1)
    for i in range(1, len(left) + 1):
        cur = [0] * (len(right) + 1)
        for j in range(1, len(right) + 1):
            if left[i - 1] == right[j - 1]:
                cur[j] = prev[j - 1] + 1
                # Ties go to the run that ends latest in `left` (closest to the real overlap).
                if cur[j] >= best[2]:
                    best = (i - cur[j], j - cur[j], cur[j])
        prev = cur
    return best


def merge_pair(left: list[T], right: list[T], max_overlap: int | None = None, min_match: int = 2) -> list[T]:
    """Merges two consecutive hypotheses whose audio overlapped.

    Looks for the longest run shared by the tail of ``left`` and the head of ``right`` (at most
    ``max_overlap`` items each); keeps ``left`` up to and including the run and ``right`` after it. With no
    shared run of ``min_match`` items (e.g. silence in the overlap), the two are concatenated.
    """
    return merge_pair_at(left, right, max_overlap, min_match)[0]


def merge_pair_at(
    left: list[T], right: list[T], max_overlap: int | None = None, min_match: int = 2
) -> tuple[list[T], int]:
    """`merge_pair`, also returning where the words new from ``right`` begin in the merged list."""
    if not left or not right:
        return [*left, *right], len(left)
    tail_start = 0 if max_overlap is None else max(0, len(left) - max_overlap)
    tail = left[tail_start:]
    head = right if max_overlap is None else right[:max_overlap]
    i, j, n = _longest_common_run(tail, head)
    if n < min(min_match, len(tail), len(head)) or n == 0:
        return [*left, *right], len(left)
    cut = tail_start + i + n
    return [*left[:cut], *right[j + n :]], cut


@overload
def stitch(pieces: Sequence[str], max_overlap: int | None = ..., min_match: int = ...) -> str: ...
@overload
def stitch(
    pieces: Sequence[Sequence[int]], max_overlap: int | None = ..., min_match: int = ...
) -> list[int]: ...
def stitch(pieces, max_overlap=None, min_match=2):
    """Joins per-window hypotheses (texts or token-id lists) into one, dropping the repeated overlap.

    Texts are merged word by word and returned as one space-joined string; token-id lists are merged id by
    id and returned as one list.

    Args:
        pieces: hypotheses of consecutive overlapping windows, in order (all texts or all id lists).
        max_overlap: search for the shared run only in this many trailing/leading items (words or ids);
            ``None`` searches whole pieces.
        min_match: the shortest shared run trusted as the overlap (shorter pieces need only match fully).

    Returns:
        The stitched text, or the stitched token ids.
    """
    pieces = list(pieces)
    if not pieces:
        return ""
    if all(isinstance(p, str) for p in pieces):
        merged: list[str] = []
        for p in pieces:
            merged = merge_pair(merged, p.split(), max_overlap, min_match)
        return " ".join(merged)
    if any(isinstance(p, str) for p in pieces):
        raise TypeError("stitch: pieces must be all texts or all token-id lists")
    merged_ids: list[int] = []
    for p in pieces:
        merged_ids = merge_pair(merged_ids, [int(t) for t in p], max_overlap, min_match)
    return merged_ids


def stitch_windows(
    windows: Sequence[Window], pieces: Sequence[list[T]], max_overlap: int | None = None, min_match: int = 2
) -> tuple[list[T], list[int]]:
    """Joins the hypotheses (word or token-id lists) of planned windows (`silence.plan_windows`).

    A window that starts in a pause (``overlap == 0``) shares no audio with the previous one, so its items
    simply follow; one that starts inside the previous window's audio is merged with `merge_pair_at`.

    Returns:
        The joined items, and for each window the index in them where its own items begin.
    """
    if len(windows) != len(pieces):
        raise ValueError(f"{len(windows)} windows but {len(pieces)} hypotheses")
    merged: list[T] = []
    cuts: list[int] = []
    for window, piece in zip(windows, pieces, strict=True):
        merged, cut = join_next(merged, list(piece), window.overlap > 0, max_overlap, min_match)
        cuts.append(cut)
    return merged, cuts


def join_next(
    merged: list[T], piece: list[T], overlapped: bool, max_overlap: int | None = None, min_match: int = 2
) -> tuple[list[T], int]:
    """One step of `stitch_windows`: appends ``piece``, merging it in if its audio ``overlapped``."""
    if overlapped:
        return merge_pair_at(merged, piece, max_overlap, min_match)
    return [*merged, *piece], len(merged)
