"""`sawt bench pack`'s index-only sections: the synthetic seed mix and the fill of both plans on it.

Not timed: the fill is a property of the plans (what the packer achieves on the seed's duration mix), the
goal the issue sets for packing (>= 0.95 of decoder tokens and mel frames carrying data).
"""

from __future__ import annotations

import json

import numpy as np

from bench.pack import SEED_MEAN_S, SEED_RANGE_S, bench_epoch, bench_fill, seed_durations


def test_seed_durations_have_the_seed_mean_and_range():
    d = seed_durations(200_000, np.random.default_rng(0))
    assert SEED_RANGE_S[0] <= d.min() and d.max() <= SEED_RANGE_S[1]
    assert abs(d.mean() - SEED_MEAN_S) < 0.03


def test_packing_fills_the_rows_and_the_plan_reads_the_bench_json(tmp_path):
    from sawt.cli import main

    fill = bench_fill(quick=True)
    assert fill["token_fill_packed"] >= 0.95 and fill["frame_fill_packed"] >= 0.94
    assert fill["token_fill_bucketed"] < 0.7 and fill["frame_fill_bucketed"] < 0.75
    epoch = bench_epoch(fill)
    assert epoch["epoch_hours_v4_32_packed"] < epoch["epoch_hours_v4_32_bucketed"]
    path = tmp_path / "pack.json"
    path.write_text(json.dumps({"fill_stats": fill["fill_stats"]}))
    out = tmp_path / "plan.json"
    argv = [
        "plan",
        "--config",
        "qwen3-omni-30b-a3b",
        "--topology",
        "v4-32",
        "--fill",
        str(path),
        "--no-compile",
    ]
    assert main([*argv, "--json", str(out)]) == 0
    planned = json.loads(out.read_text())["epoch"]
    assert planned["packed"]["hours_at_mfu"] == epoch["epoch_hours_v4_32_packed"]
    assert planned["clips"] == 520_296
