"""Epoch plan: steps per epoch and epoch wall time on a TPU topology, packed (``data.packing``) and bucketed.

Where the batches' fill comes from, one of:
* a split's index (`fill_from_index`): the real batch plans of epoch 0 (trainer/data/batching.py) on the
  split's clips, tokenised with the experiment's tokenizer;
* the figures `sawt bench pack` measured (`fill_from_bench`): the same two plans on a synthetic index with the
  seed corpus's duration mix.

Either gives, per mode, the clips the plan covered and its steps per bucket. `estimate` scales them to the
epoch's clip count and prices every step with the analytic FLOPs of its shape (trainer/flops.py):
epoch seconds = sum over buckets of steps x FLOPs per step / (chips x peak FLOP/s x MFU), at the chip's peak
and at a stated MFU. Padding is computed, so it is priced: that is what packing saves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MODES = ("packed", "bucketed")


def fill_stats(index: Any, costs: Any, data: Any, global_batch: int, seed: int = 0) -> dict[str, Any]:
    """Both modes' fill and steps per bucket for epoch 0 of ``index`` (``costs``: `ClipCosts` of its records).

    Args:
        index: the split's `SplitIndex`.
        costs: every record's `ClipCosts` (decoder tokens of its training row included).
        data: the `DataConfig` (buckets, duration filter, clip slots, mixture).
        global_batch: rows per step.
        seed: the data seed.
    """
    from trainer.data import batching
    from trainer.data.packing import RowCapacity

    frames, tokens = data.buckets[-1]
    common = dict(
        seed=seed,
        epoch=0,
        min_duration=data.min_duration,
        max_duration=data.max_duration,
        source_weights=data.source_weights,
    )
    capacity = RowCapacity.of_bucket(frames, tokens, data.max_clips_per_row)
    packed = batching.packed_epoch_plan(index, costs, capacity, len(data.buckets) - 1, global_batch, **common)
    bucketed = batching.epoch_plan(index, [b[0] for b in data.buckets], global_batch, shuffle=True, **common)
    # The bucketed plan counts a clip too long for its bucket's text at featurise time; leave those out of the
    # fill too, so both modes price the same clips.
    out = {}
    for mode, batches in (
        ("packed", packed.batches),
        ("bucketed", _drop_text_too_long(bucketed, costs, data)),
    ):
        stats = batching.plan_fill(batches, costs, data.buckets)
        stats["clips_per_row"] = data.max_clips_per_row if mode == "packed" else 1
        out[mode] = stats
    out["global_batch"] = global_batch
    out["buckets"] = [list(b) for b in data.buckets]
    return out


def _drop_text_too_long(batches: list, costs: Any, data: Any) -> list:
    import numpy as np

    from trainer.data.batching import PAD_ROW, PlannedBatch

    out = []
    for p in batches:
        rows = p.rows.copy()
        real = rows != PAD_ROW
        too_long = np.zeros_like(real)
        too_long[real] = costs.tokens[rows[real]] > data.buckets[p.bucket][1]
        rows[too_long] = PAD_ROW
        out.append(PlannedBatch(p.bucket, rows))
    return out


def fill_from_index(cfg: Any, split_dir: str | Path) -> dict[str, Any]:
    """`fill_stats` of a converted split (a directory holding ``index.npz``, or the file itself)."""
    from trainer.data.loader import load_index_file, row_tokens
    from trainer.data.packing import ClipCosts
    from trainer.data.text import load_tokenizer

    path = Path(split_dir)
    path = path if path.name == "index.npz" else path / "index.npz"
    index, _ = load_index_file(path)
    tok = load_tokenizer(cfg.tokenizer.dir)
    lengths = row_tokens(
        index,
        tok,
        cfg.data.prompt_style(),
        language_field=cfg.data.language_field,
        context_field=cfg.data.context_field,
    )
    costs = ClipCosts.of(index.num_frames(), lengths)
    stats = fill_stats(
        index, costs, cfg.data, cfg.train.global_batch_size, cfg.seed + cfg.data.shuffle_seed_offset
    )
    stats["source"] = str(path)
    return stats


def fill_from_bench(path: str | Path) -> dict[str, Any]:
    """The ``fill_stats`` section a `sawt bench pack --json FILE` run wrote."""
    data = json.loads(Path(path).read_text())
    if "fill_stats" not in data:
        raise ValueError(f"{path}: no fill_stats (not a `sawt bench pack --json` file)")
    stats = dict(data["fill_stats"])
    stats["source"] = str(path)
    return stats


def estimate(
    stats: dict[str, Any],
    model_config: Any,
    frozen: tuple[str, ...] | list[str],
    chips: int,
    peak_flops: float,
    mfu: float,
    clips: int | None = None,
) -> dict[str, Any]:
    """Steps and wall time of one epoch of ``clips`` clips, both modes.

    Default ``clips``: the stats' ``epoch_clips`` (a bench run records the epoch it stands for), else the
    plans' own clips. The stats' steps per bucket are scaled by ``clips`` over the clips their plan held (the
    fill does not depend on the epoch's size once it holds thousands of clips).
    """
    from trainer.flops import train_flops_per_step

    clips = clips or stats.get("epoch_clips")
    batch = int(stats["global_batch"])
    out: dict[str, Any] = {
        "clips": int(clips or stats["packed"]["clips"]),
        "global_batch": batch,
        "chips": chips,
        "assumed_mfu": mfu,
    }
    for mode in MODES:
        s = stats[mode]
        scale = clips / max(s["clips"], 1) if clips else 1.0
        steps = flops = 0.0
        for (frames, tokens), n in zip(stats["buckets"], s["steps_per_bucket"], strict=True):
            if not n:
                continue
            k = math.ceil(n * scale)
            steps += k
            flops += k * train_flops_per_step(model_config, batch, tokens, frames, frozen, s["clips_per_row"])
        at_peak = flops / (chips * peak_flops)
        out[mode] = {
            "steps": int(steps),
            "token_fill": s["token_fill"],
            "frame_fill": s["frame_fill"],
            "flops": flops,
            "seconds_at_peak": at_peak,
            "seconds_at_mfu": at_peak / mfu,
            "hours_at_peak": at_peak / 3600,
            "hours_at_mfu": at_peak / mfu / 3600,
        }
    out["speedup"] = out["bucketed"]["seconds_at_peak"] / max(out["packed"]["seconds_at_peak"], 1e-30)
    return out


def format_epoch(e: dict[str, Any], topology: str) -> str:
    """A human summary of `estimate`'s result."""
    lines = [
        f"epoch of {e['clips']:,} clips on {topology} ({e['chips']} chips), {e['global_batch']} rows per step:"
    ]
    for mode in MODES:
        m = e[mode]
        lines.append(
            f"  {mode:<9} {m['steps']:>7,} steps; fill tokens {m['token_fill']:.3f}, frames {m['frame_fill']:.3f}; "
            f"{m['hours_at_peak']:.2f} h at peak, {m['hours_at_mfu']:.2f} h at {e['assumed_mfu']:.0%} MFU"
        )
    lines.append(f"  packing: {e['speedup']:.2f}x less compute per epoch")
    return "\n".join(lines)
