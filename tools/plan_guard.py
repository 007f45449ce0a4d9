"""The plan guard: the per-chip TPU memory of a reduced 30B-shaped train step, against committed figures.

`make plan-guard` compiles the `qwen3-omni-30b-a3b` train step (full fine-tune, bf16, FSDP over 16 chips)
for a v4-32 with the preset's real widths (hidden 2048, 128 experts x 768, vocabulary 152064, audio
d_model 1280) but 2 + 2 layers and one short row per chip, and compares its per-chip arguments, temporaries
and total with `tests/goldens/plan/reduced_30b_v4-32.json`. Run it before every change to the train step,
the model or the sharding: a change that raises TPU memory then shows in review, not on a cluster. (Issue
16: `moe_impl: auto` resolved against the CPU host and planned the CPU MoE dispatch for the TPU, and the
30B plan's temporaries went from 9.5 to 15.2 GiB per chip without anyone noticing.)

The widths are what make the MoE dispatch, the embedding/lm_head and the gradient layouts as large per
chip as in the real plan; the layer count only scales the state and is kept small for the compile time
(several minutes on 2 cores even so, which is why this is a make target and not in the default suite).

A deliberate change of the figures (a new libtpu, packing, a different remat): run
`make plan-guard-update`, which re-measures and rewrites the JSON, and commit it with the reason in the
commit message (and re-measure `make plan-30b` for docs/benchmarks.md).

    python -m tools.plan_guard            # check (exit 1 on a difference beyond the tolerance)
    python -m tools.plan_guard --update   # re-measure and rewrite the committed figures
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

FIGURES_PATH = Path(__file__).resolve().parents[1] / "tests" / "goldens" / "plan" / "reduced_30b_v4-32.json"

# The reduced plan: the 30B preset's widths, 2 decoder + 2 encoder layers, 16 rows (one per chip) of 256
# tokens and 1000 mel frames (10 s). Changing it means re-recording the figures (--update).
CASE: dict[str, Any] = {
    "config": "qwen3-omni-30b-a3b",
    "topology": "v4-32",
    "seq": 256,
    "frames": 1000,
    "overrides": [
        "mesh.data=1",
        "mesh.fsdp=16",
        "mesh.expert=1",
        "mesh.tensor=1",
        "train.global_batch_size=16",
        "train.freeze=[]",
        "model.text.num_hidden_layers=2",
        "model.audio.encoder_layers=2",
    ],
}
# Relative tolerance: libtpu is pinned and the compile is deterministic, so any real change to the step
# moves the figures by more than this.
TOLERANCE = 0.02
CHECKED = ("argument_bytes", "temp_bytes", "per_chip_bytes")
UPDATE_HINT = (
    "If the change is deliberate, re-record the figures with `make plan-guard-update` (python -m "
    "tools.plan_guard --update), commit tests/goldens/plan/reduced_30b_v4-32.json with the reason, and "
    "re-measure `make plan-30b` for docs/benchmarks.md."
)


def measure(extra_overrides: list[str] | None = None) -> dict[str, Any]:
    """Compiles the reduced plan in this process (set AOT_ENV before jax is imported) and returns figures."""
    from tools.aot_plan import plan

    result = plan(
        CASE["config"],
        [*CASE["overrides"], *(extra_overrides or [])],
        CASE["topology"],
        seq=CASE["seq"],
        frames=CASE["frames"],
    )
    if result.get("per_chip_bytes") is None:
        raise RuntimeError(f"the reduced plan did not compile: {result.get('compile_error')}")
    mem = result["memory"]
    return {
        "argument_bytes": mem["argument_bytes"],
        "temp_bytes": mem["temp_bytes"],
        "per_chip_bytes": result["per_chip_bytes"],
        "generated_code_bytes": mem["generated_code_bytes"],
        "moe_impl": result["moe_impl"],
        "compile_seconds": round(result["compile_seconds"]),
    }


def compare(measured: dict[str, Any], committed: dict[str, Any], tolerance: float = TOLERANCE) -> list[str]:
    """The differences beyond ``tolerance`` between measured and committed figures, as sentences."""
    gib = 2**30
    problems = []
    for key in CHECKED:
        new, old = measured[key], committed[key]
        if abs(new - old) > tolerance * old:
            way = "rose" if new > old else "fell"
            problems.append(
                f"{key} {way} from {old / gib:.3f} GiB to {new / gib:.3f} GiB per chip "
                f"({(new - old) / old:+.1%}; tolerance {tolerance:.0%})"
            )
    if measured["moe_impl"] != committed["moe_impl"]:
        problems.append(
            f"the plan compiled the {measured['moe_impl']!r} MoE dispatch, the figures were recorded with "
            f"{committed['moe_impl']!r}"
        )
    return problems


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("jax", "jaxlib", "libtpu")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plan_guard", description=__doc__.split("\n")[0])
    parser.add_argument("--update", action="store_true", help="re-measure and rewrite the committed figures")
    parser.add_argument("--figures", type=Path, default=FIGURES_PATH, help="the committed figures (JSON)")
    parser.add_argument(
        "overrides", nargs="*", help="extra config overrides for an experiment (never with --update)"
    )
    args = parser.parse_intermixed_args(argv)  # overrides on either side of a flag
    if args.update and args.overrides:
        parser.error("--update records the reduced plan as defined in tools/plan_guard.py; no overrides")

    from tools.aot_plan import AOT_ENV

    os.environ.update(AOT_ENV)  # before jax is imported (plan imports it)
    print(f"compiling the reduced 30B plan for {CASE['topology']} (several minutes)...", flush=True)
    measured = measure(args.overrides)
    gib = 2**30
    print(
        f"measured: arguments {measured['argument_bytes'] / gib:.3f} GiB, temporaries "
        f"{measured['temp_bytes'] / gib:.3f} GiB, total {measured['per_chip_bytes'] / gib:.3f} GiB per chip "
        f"(MoE dispatch {measured['moe_impl']}; compile {measured['compile_seconds']} s)"
    )
    if args.update:
        from core.fileio import atomic_write_json

        record = {
            "about": "per-chip figures of tools/plan_guard.py's reduced 30B plan; rewrite with "
            "`make plan-guard-update`, never by hand",
            "case": CASE,
            "figures": {k: measured[k] for k in (*CHECKED, "generated_code_bytes", "moe_impl")},
            "recorded": {"date": datetime.date.today().isoformat(), **_versions()},
        }
        args.figures.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.figures, record)
        print(f"wrote {args.figures}")
        return 0
    committed = json.loads(args.figures.read_text())
    if committed["case"] != CASE:
        print(f"{args.figures} was recorded for another case than tools/plan_guard.py's. {UPDATE_HINT}")
        return 1
    problems = compare(measured, committed["figures"])
    if problems:
        print("plan guard: the TPU memory of the train step changed:\n  " + "\n  ".join(problems))
        recorded, now = committed["recorded"].get("libtpu"), _versions()["libtpu"]
        if recorded != now:
            print(
                f"(the figures were recorded with libtpu {recorded}, this is {now}: a new compiler moves them)"
            )
        print(UPDATE_HINT)
        return 1
    print(
        f"plan guard: within {TOLERANCE:.0%} of {args.figures.name} (recorded {committed['recorded']['date']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
