"""The global batch plan: which records form which global batch, in which bucket, for every epoch.

Computed from the split's index (durations and sources) alone, identically on every process, so that every
process picks the same bucket (the same static shape) for the same step: the trainer assembles one global batch
from the processes' local rows with ``jax.make_array_from_process_local_data``. Each process then takes its
own contiguous, disjoint slice of rows of every global batch (`process_rows`); together the slices cover the
global batch.

Per epoch (randomness from ``(seed, epoch)`` only):
1. filter by duration (and by the largest bucket);
2. apply the source mixture (training only): each source's share of the epoch follows its weight;
3. shuffle;
4. put each record in the first bucket that holds its audio, and cut each bucket's records (in shuffled order)
   into global batches; a bucket's last batch is filled with padding rows (-1), so every selected record is
   used exactly once per epoch;
5. shuffle the order of the batches.

Evaluation plans skip 2, 3 and 5: record order, bucket by bucket, one pass.

Packed plans (`packed_epoch_plan`, ``data.packing``, training only) replace step 4: the shuffled records are
packed several to a row of the largest bucket (trainer/data/packing.py), and the rows, in the order the packer
closes them, are cut into global batches. A record too long for even an empty row is left out and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.data.audio import HOP, SAMPLE_RATE
from trainer.data.packing import ClipCosts, RowCapacity, pack
from trainer.model.geometry import chunk_slots, encoder_token_count

PAD_ROW = -1


@dataclass(frozen=True)
class SplitIndex:
    """Per-record metadata of one split, in record order (shards sorted by file name).

    Attributes:
        duration: float32 [N] seconds.
        source_id: int32 [N] index into ``sources``.
        sources: dataset names.
        texts: the transcripts, when the index holds them (packing needs each clip's token count up front).
    """

    duration: np.ndarray
    source_id: np.ndarray
    sources: tuple[str, ...]
    texts: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.duration.size)

    def num_frames(self) -> np.ndarray:
        """Log-mel frames of each record (``samples // 160``, samples recovered from the duration)."""
        samples = np.rint(self.duration.astype(np.float64) * SAMPLE_RATE).astype(np.int64)
        return samples // HOP


@dataclass(frozen=True)
class PlannedBatch:
    """One global batch: its bucket and its record indices (``PAD_ROW`` for padding rows and empty slots).

    ``rows`` is int64 [global batch] (one clip per row) or [global batch, clips] (packed rows).
    """

    bucket: int
    rows: np.ndarray


def assign_buckets(num_frames: np.ndarray, bucket_frames: Sequence[int]) -> np.ndarray:
    """Index of the first bucket whose audio_frames hold each clip; -1 where none does."""
    edges = np.asarray(bucket_frames, dtype=np.int64)
    bucket = np.searchsorted(edges, num_frames, side="left")
    return np.where(bucket < edges.size, bucket, -1)


def eligible(
    index: SplitIndex, bucket_frames: Sequence[int], min_duration: float, max_duration: float
) -> np.ndarray:
    """Record indices kept by the duration filter that also fit a bucket (ascending)."""
    keep = (index.duration >= min_duration) & (index.duration <= max_duration)
    keep &= assign_buckets(index.num_frames(), bucket_frames) >= 0
    return np.flatnonzero(keep)


def mixture(
    index: SplitIndex, records: np.ndarray, weights: dict[str, float], rng: np.random.Generator
) -> np.ndarray:
    """Records of one epoch under source weights: source s gets ``round(w_s / sum(w) * len(records))`` draws.

    Draws from a source are a fresh permutation of its records, repeated when it needs more than it has, so a
    small source is upsampled and a large one subsampled without duplicates.
    """
    names = index.sources
    present = sorted({names[i] for i in np.unique(index.source_id[records])})
    total_weight = sum(weights.get(name, 0.0) for name in present)
    if total_weight <= 0:
        raise ValueError(f"source_weights {weights} give no weight to any source of this split: {present}")
    chosen = []
    for sid, name in enumerate(names):
        weight = weights.get(name, 0.0)
        pool = records[index.source_id[records] == sid]
        if weight <= 0 or pool.size == 0:
            continue
        want = round(weight / total_weight * records.size)
        reps = -(-want // pool.size)
        draws = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:want]
        chosen.append(draws)
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def epoch_plan(
    index: SplitIndex,
    bucket_frames: Sequence[int],
    global_batch: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    min_duration: float,
    max_duration: float,
    source_weights: dict[str, float] | None = None,
) -> list[PlannedBatch]:
    """The global batches of one epoch (see the module docstring).

    Args:
        index: the split's per-record metadata.
        bucket_frames: ascending audio_frames of the buckets.
        global_batch: rows per global batch (all processes).
        seed: data seed; with ``epoch`` it determines everything random.
        epoch: epoch number (0-based).
        shuffle: training order (mixture, shuffles) or evaluation order (record order, one pass).
        min_duration, max_duration: the duration filter in seconds.
        source_weights: training mixture (None or empty: every record once).

    Returns:
        The epoch's batches, in the order they are consumed.
    """
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    records = eligible(index, bucket_frames, min_duration, max_duration)
    rng = np.random.default_rng([seed, epoch])
    if shuffle:
        records = _shuffled(index, records, source_weights, rng)
    buckets = assign_buckets(index.num_frames()[records], bucket_frames)
    batches: list[PlannedBatch] = []
    for b in range(len(bucket_frames)):
        members = records[buckets == b]
        for start in range(0, members.size, global_batch):
            rows = np.full(global_batch, PAD_ROW, np.int64)
            chunk = members[start : start + global_batch]
            rows[: chunk.size] = chunk
            batches.append(PlannedBatch(b, rows))
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _shuffled(
    index: SplitIndex, records: np.ndarray, source_weights: dict[str, float] | None, rng: np.random.Generator
) -> np.ndarray:
    """Steps 2 and 3: the epoch's mixture, in shuffled order."""
    if source_weights:
        records = mixture(index, records, source_weights, rng)
    return rng.permutation(records)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch: its global batches, in the order they are consumed, and its draws left out, by reason."""

    batches: list[PlannedBatch]
    dropped: dict[str, int]


def packed_epoch_plan(
    index: SplitIndex,
    costs: ClipCosts,
    capacity: RowCapacity,
    bucket: int,
    global_batch: int,
    *,
    seed: int,
    epoch: int,
    min_duration: float,
    max_duration: float,
    source_weights: dict[str, float] | None = None,
) -> EpochPlan:
    """The global batches of one packed training epoch (see the module docstring).

    Args:
        index: the split's per-record metadata.
        costs: every record's cost in a row (`ClipCosts.of`: frames from the index, tokens of its training row).
        capacity: what a row of the packing bucket holds.
        bucket: that bucket's index (the batches' static shape).
        global_batch: rows per global batch (all processes).
        seed, epoch: determine everything random.
        min_duration, max_duration: the duration filter in seconds.
        source_weights: training mixture (None or empty: every record once).

    Returns:
        The epoch's batches in the order they are consumed, and ``dropped``: the epoch's draws that fit no
        row (``text_too_long``: the prompt and transcript exceed the row's tokens; the audio always fits, by
        the duration filter).
    """
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    records = eligible(index, [capacity.frames], min_duration, max_duration)
    rng = np.random.default_rng([seed, epoch])
    records = _shuffled(index, records, source_weights, rng)
    fits = costs.fits(capacity)[records]
    dropped = {"text_too_long": int((~fits).sum())} if not fits.all() else {}
    rows = pack(records[fits], costs, capacity)
    batches = []
    for start in range(0, len(rows), global_batch):
        table = np.full((global_batch, capacity.clips), PAD_ROW, np.int64)
        for r, members in enumerate(rows[start : start + global_batch]):
            table[r, : len(members)] = members
        batches.append(PlannedBatch(bucket, table))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    return EpochPlan(batches, dropped)


def plan_fill(
    batches: list[PlannedBatch], costs: ClipCosts, buckets: Sequence[tuple[int, int]], n_window: int = 50
) -> dict[str, float]:
    """How much of what an epoch's batches compute carries real data (padding rows included).

    Keys: ``token_fill`` (decoder tokens), ``frame_fill`` (mel frames of the batch arrays), ``chunk_fill``
    (frames over the encoder's conv chunk slots: a clip's last partial second is padding in any layout),
    ``audio_token_fill`` (the encoder's token stream), ``rows``, ``clips``, ``steps`` and ``steps_per_bucket``.
    """
    chunk = 2 * n_window
    real = dict.fromkeys(("tokens", "frames", "audio_tokens"), 0)
    slots = dict.fromkeys(("tokens", "frames", "chunk_frames", "audio_tokens"), 0)
    steps = [0] * len(buckets)
    clips = rows = 0
    for p in batches:
        frames, tokens = buckets[p.bucket]
        per_row = p.rows.shape[1] if p.rows.ndim == 2 else 1
        members = p.rows[p.rows != PAD_ROW]
        n = p.rows.shape[0]
        real["tokens"] += int(costs.tokens[members].sum())
        real["frames"] += int(costs.frames[members].sum())
        real["audio_tokens"] += int(costs.audio_tokens[members].sum())
        slots["tokens"] += n * tokens
        slots["frames"] += n * frames
        slots["chunk_frames"] += n * chunk_slots(frames, per_row, chunk) * chunk
        slots["audio_tokens"] += n * -(-frames // chunk) * int(encoder_token_count(chunk, n_window))
        steps[p.bucket] += 1
        clips += members.size
        rows += n
    ratio = lambda a, b: a / b if b else 0.0  # noqa: E731
    return {
        "token_fill": ratio(real["tokens"], slots["tokens"]),
        "frame_fill": ratio(real["frames"], slots["frames"]),
        "chunk_fill": ratio(real["frames"], slots["chunk_frames"]),
        "audio_token_fill": ratio(real["audio_tokens"], slots["audio_tokens"]),
        "rows": rows,
        "clips": clips,
        "steps": len(batches),
        "steps_per_bucket": steps,
    }


def process_rows(rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This process's contiguous slice of a global batch's rows (the order make_array_from_process_local_data
    expects when the batch axis is sharded over processes in process order).

    ``rows`` is [global batch] or, packed, [global batch, clips]: the split is along the first axis only.
    """
    n = rows.shape[0]  # not rows.size: that counts a packed batch's clip slots (issue 13's 2-process hang)
    if n % process_count:
        raise ValueError(f"a global batch of {n} rows does not split over {process_count} processes")
    per = n // process_count
    return rows[process_index * per : (process_index + 1) * per]
