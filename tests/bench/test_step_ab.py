"""bench/step_ab.py: parsing of the flag sets and the summary (the timed children are a benchmark, not a test)."""

import pytest

from bench.step_ab import DEFAULT_SETS, parse_sets, summarise


def test_sets_default_and_parsed_in_order():
    assert parse_sets([]) == DEFAULT_SETS
    sets = parse_sets(["off=", "on=--xla_cpu_enable_concurrency_optimized_scheduler=true --a=b"])
    assert list(sets) == ["off", "on"]
    assert sets["off"] == ""
    assert sets["on"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true --a=b"
    with pytest.raises(ValueError, match="NAME=XLA_FLAGS"):
        parse_sets(["no-equals-sign"])


def test_summary_medians_and_ratios_against_the_first_set():
    samples = {
        "a": {"wall": [1.0, 3.0, 2.0], "cpu": [1.0, 1.0, 1.0]},
        "b": {"wall": [1.0, 0.5, 9.0], "cpu": [0.5, 0.5, 2.0]},
    }
    out = summarise(samples)
    assert out["a"]["wall_s_per_step"] == 2.0
    assert out["a"]["wall_speedup_vs_a"] == 1.0
    assert out["b"]["wall_s_per_step"] == 1.0
    assert out["b"]["wall_speedup_vs_a"] == 2.0
    assert out["b"]["cpu_speedup_vs_a"] == 2.0
    assert out["b"]["n"] == 3
