"""The plan guard (tools/plan_guard.py): its comparison, its committed figures, and the real reduced plan.

The reduced 30B compile takes several minutes on 2 cores, so the real check is `make plan-guard` (and the
slow test below); the default suite checks the comparison and that the committed figures belong to the
guard's case.
"""

import json
import subprocess
import sys

import pytest

from tools import plan_guard
from tools.aot_plan import for_target_platform
from trainer.config import load_experiment

GIB = 2**30
FIGURES = {
    "argument_bytes": 0.70 * GIB,
    "temp_bytes": 1.70 * GIB,
    "per_chip_bytes": 2.46 * GIB,
    "moe_impl": "ragged",
}


def test_compare_accepts_figures_within_the_tolerance():
    measured = {**FIGURES, "temp_bytes": FIGURES["temp_bytes"] * 1.01}
    assert plan_guard.compare(measured, FIGURES) == []


def test_compare_names_temporaries_that_rose_and_a_changed_dispatch():
    # What the regression of issue 16 looked like at this size: the blocked CPU dispatch planned for a TPU.
    measured = {
        **FIGURES,
        "temp_bytes": 3.9 * GIB,
        "per_chip_bytes": 4.66 * GIB,
        "moe_impl": "blocked",
    }
    problems = plan_guard.compare(measured, FIGURES)
    assert len(problems) == 3
    assert problems[0].startswith("temp_bytes rose from 1.700 GiB to 3.900 GiB per chip (+129.4%")
    assert problems[1].startswith("per_chip_bytes rose")
    assert "'blocked' MoE dispatch" in problems[2]


def test_compare_also_flags_figures_that_fell():
    # A drop is good news, but the committed figures must follow it, or they stop guarding anything.
    measured = {**FIGURES, "temp_bytes": 1.0 * GIB, "per_chip_bytes": 1.76 * GIB}
    assert [p.split(" from")[0] for p in plan_guard.compare(measured, FIGURES)] == [
        "temp_bytes fell",
        "per_chip_bytes fell",
    ]


def test_committed_figures_belong_to_the_guard_case():
    committed = json.loads(plan_guard.FIGURES_PATH.read_text())
    assert committed["case"] == plan_guard.CASE, (
        "tools/plan_guard.py's CASE changed without re-recording: run `make plan-guard-update`"
    )
    assert committed["figures"]["moe_impl"] == "ragged"
    assert set(plan_guard.CHECKED) <= set(committed["figures"])


def test_auto_choices_resolve_for_the_target_chips_not_the_host():
    cfg = load_experiment("qwen3-omni-30b-a3b", [])
    assert cfg.model.moe_impl == "auto"
    assert for_target_platform(cfg, "tpu").model.moe_impl == "ragged"
    assert for_target_platform(cfg, "cpu").model.moe_impl == "blocked"
    pinned = load_experiment("qwen3-omni-30b-a3b", ["model.moe_impl=dense"])
    assert for_target_platform(pinned, "tpu").model.moe_impl == "dense"


@pytest.mark.slow
def test_reduced_30b_plan_matches_the_committed_figures():
    proc = subprocess.run(
        [sys.executable, "-m", "tools.plan_guard"], capture_output=True, text=True, timeout=3600
    )
    lines = [line for line in proc.stdout.splitlines() if not line.startswith(("E0", "W0", "I0"))]
    assert proc.returncode == 0, "\n".join(lines)
