"""Packing clips into batch rows: a packed row's capacity, each clip's cost, and the best-fit packer.

A packed row (interfaces §1) holds several clips end to end, each with its own prompt, transcript and
audio. What a clip costs is known from the split's index alone, before any record is read:

* mel frames ``n`` (from the duration), the conv chunks of its own chunk grid ``ceil(n / 100)`` and its
  encoder tokens ``T(n)`` (trainer/model/geometry.py);
* decoder tokens: its whole training row (prompt with ``T(n)`` placeholders + transcript + ``<|im_end|>``),
  from the transcript's token count (the index holds the transcripts; see tools/data/convert.py).

A row of the largest bucket holds ``frames`` mel frames, ``chunk_slots(frames, clips)`` conv chunks,
``ceil(frames / 100) * 13`` encoder tokens (the encoder's stream length), ``tokens`` decoder tokens and
``clips`` clip slots (`RowCapacity`). `pack` walks the clips in the epoch's shuffled order and puts each into
the open row it fits most tightly (best fit over a bounded set of open rows); a row that cannot take even
the cheapest clip is closed at once, and when a clip fits no open row the fullest one is closed to make
room. Integer arithmetic on the same inputs, so every process computes the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.model.geometry import chunk_slots, encoder_token_count

CHUNK_FRAMES = 100  # n_window 50: the conv chunk (1 s); every preset and the real checkpoint use it
OPEN_ROWS = 32  # rows the packer keeps open; more gives little (measured in docs/benchmarks.md)


@dataclass(frozen=True)
class RowCapacity:
    """What one packed row holds: mel frames, conv chunks, encoder tokens, decoder tokens, clips."""

    frames: int
    chunks: int
    audio_tokens: int
    tokens: int
    clips: int

    @classmethod
    def of_bucket(cls, frames: int, tokens: int, clips: int, n_window: int = 50) -> RowCapacity:
        """The capacity of a ``(frames, tokens)`` bucket's row with ``clips`` clip slots."""
        chunk = 2 * n_window
        return cls(
            frames=frames,
            chunks=chunk_slots(frames, clips, chunk),
            audio_tokens=-(-frames // chunk) * int(encoder_token_count(chunk, n_window)),
            tokens=tokens,
            clips=clips,
        )


@dataclass(frozen=True)
class ClipCosts:
    """Per record (int64 [N]): mel frames, conv chunks, encoder tokens and decoder tokens of its row."""

    frames: np.ndarray
    chunks: np.ndarray
    audio_tokens: np.ndarray
    tokens: np.ndarray

    @classmethod
    def of(cls, frames: np.ndarray, row_tokens: np.ndarray, n_window: int = 50) -> ClipCosts:
        """Costs from the records' mel frames and the lengths of their training rows (prompt + answer)."""
        frames = np.asarray(frames, np.int64)
        chunk = 2 * n_window
        return cls(
            frames=frames,
            chunks=-(-frames // chunk),
            audio_tokens=np.asarray(encoder_token_count(frames, n_window), np.int64),
            tokens=np.asarray(row_tokens, np.int64),
        )

    def fits(self, capacity: RowCapacity) -> np.ndarray:
        """bool [N]: the record fits an empty row."""
        return (
            (self.frames <= capacity.frames)
            & (self.chunks <= capacity.chunks)
            & (self.audio_tokens <= capacity.audio_tokens)
            & (self.tokens <= capacity.tokens)
        )


def pack(
    order: np.ndarray, costs: ClipCosts, capacity: RowCapacity, open_rows: int = OPEN_ROWS
) -> list[list[int]]:
    """Packs the records of ``order`` (each must fit an empty row) into rows, in the order rows close.

    Best fit: a clip goes to the open row whose tighter dimension (mel frames or decoder tokens, as a
    fraction of the row) is left smallest after it; ties go to the row opened first.

    Returns:
        The rows: lists of record indices, each in placement order. Every record of ``order`` appears in
        exactly one row, as often as it appears in ``order``.
    """
    cap = (capacity.frames, capacity.chunks, capacity.audio_tokens, capacity.tokens)
    inv_f, inv_t = 1.0 / capacity.frames, 1.0 / capacity.tokens
    order = np.asarray(order, np.int64)
    if order.size == 0:
        return []
    sel = [getattr(costs, k)[order].tolist() for k in ("frames", "chunks", "audio_tokens", "tokens")]
    # The cheapest clip of the epoch: a row left with less than this in any dimension is closed at once.
    least = tuple(min(col) for col in sel)
    rows: list[list[int]] = []
    open_members: list[list[int]] = []
    open_left: list[list[int]] = []  # remaining frames, chunks, audio tokens, tokens, clip slots

    def fullness(left: list[int]) -> float:
        return min(left[0] * inv_f, left[3] * inv_t)

    for rec, f, c, a, t in zip(order.tolist(), *sel, strict=True):
        best, best_score = -1, 2.0
        for j, left in enumerate(open_left):
            if left[4] and left[0] >= f and left[1] >= c and left[2] >= a and left[3] >= t:
                score = min((left[0] - f) * inv_f, (left[3] - t) * inv_t)
                if score < best_score:
                    best, best_score = j, score
        if best < 0:
            if len(open_left) >= open_rows:
                full = min(range(len(open_left)), key=lambda j: fullness(open_left[j]))
                rows.append(open_members.pop(full))
                open_left.pop(full)
            open_members.append([])
            open_left.append([*cap, capacity.clips])
            best = len(open_left) - 1
        left = open_left[best]
        left[0] -= f
        left[1] -= c
        left[2] -= a
        left[3] -= t
        left[4] -= 1
        open_members[best].append(rec)
        if not left[4] or any(left[i] < least[i] for i in range(4)):
            rows.append(open_members.pop(best))
            open_left.pop(best)
    rows.extend(open_members)
    return rows
