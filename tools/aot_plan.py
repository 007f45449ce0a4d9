"""Ahead-of-time plan: compile the real training step for a Cloud TPU topology on this CPU machine.

`plan(...)` builds the same program as `sawt train` (trainer.train.build_program: shapes, shardings, optimizer
and step of the real Thinker), lowers it against compile-only TPU devices from libtpu
(`jax.experimental.topologies.get_topology_desc`) and compiles it, all from shapes (no weights). It reports
per-chip memory (arguments, outputs, temporaries, generated code) from `memory_analysis()`, whether it fits
the HBM the compiler budgets, the analytic FLOPs per step (trainer/flops.py; XLA's `cost_analysis` counts
a scanned layer once, see /work/shared/docs/aot-tpu.md) and the predicted step time at peak and at a
stated MFU.

Run through `sawt plan`, which starts this module in a subprocess with the environment libtpu needs on a
CPU host (`AOT_ENV`). Config choices left to the backend (`model.moe_impl: auto`) are resolved for the
target's chips, not for this CPU host (`for_target_platform`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

AOT_ENV = {
    "JAX_PLATFORMS": "cpu",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_WORKER_ID": "0",
    "TPU_SKIP_MDS_QUERY": "1",
    # libtpu takes /tmp/libtpu_lockfile to own the host's chips; a compile-only plan owns none, and without
    # this a second plan on the same machine (parallel tests, two users) fails with "ABORTED: ... lockfile".
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


@dataclass(frozen=True)
class AotTopology:
    """A slice that libtpu can describe for compilation, and the chip facts a plan needs."""

    name: str
    topology: str  # get_topology_desc topology_name
    chip_config: str
    device_kind: str
    chips: int
    hbm_bytes: float
    hbm_budget_bytes: float  # what XLA lets a program use (aot-tpu.md pitfall 7)
    peak_flops: float  # dense bf16 FLOP/s per chip


_GIB = 2**30
# v4: 32 GiB HBM, the compiler budgets 30.75 GiB (measured here); 275 TFLOP/s bf16 per chip.
TOPOLOGIES: dict[str, AotTopology] = {
    t.name: t
    for t in (
        AotTopology("v4-8", "v4:2x2x1", "megacore", "TPU v4", 4, 32 * _GIB, 30.75 * _GIB, 275e12),
        AotTopology("v4-16", "v4:2x2x2", "megacore", "TPU v4", 8, 32 * _GIB, 30.75 * _GIB, 275e12),
        AotTopology("v4-32", "v4:2x2x4", "megacore", "TPU v4", 16, 32 * _GIB, 30.75 * _GIB, 275e12),
        AotTopology("v5p-32", "v5:2x2x4", "megacore", "TPU v5", 16, 95 * _GIB, 95 * _GIB, 459e12),
        AotTopology("v5litepod-16", "v5e:4x4", "default", "TPU v5 lite", 16, 16 * _GIB, 16 * _GIB, 197e12),
        AotTopology("v6e-16", "v6e:4x4", "default", "TPU v6 lite", 16, 32 * _GIB, 32 * _GIB, 918e12),
    )
}


def topology_devices(topo: AotTopology) -> list[Any]:
    from jax.experimental.topologies import get_topology_desc

    desc = get_topology_desc(
        platform="tpu",
        topology_name=topo.topology,
        chip_config_name=topo.chip_config,
        chips_per_host_bounds=(2, 2, 1),
        num_slices=1,
        wrap=(False, False, False),
    )
    return list(desc.devices)


def _abstract_batch(mesh: Any, batch: int, seq: int, frames: int, clips: int) -> dict[str, Any]:
    """The training batch's arrays as sharded shapes: the loader's own layout (packed when ``clips``)."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from trainer.data.loader import empty_batch
    from trainer.distributed import BATCH_AXES

    arrays = empty_batch(batch, frames, seq, clips)
    return {
        k: jax.ShapeDtypeStruct(
            v.shape, v.dtype, sharding=NamedSharding(mesh, P(BATCH_AXES, *([None] * (v.ndim - 1))))
        )
        for k, v in arrays.items()
        if k != "meta"
    }


class PlanInputError(ValueError):
    """The config cannot be planned for this topology; the message says what to change."""


# Exit code of the compile subprocess for a config error (the parent prints the message, not a traceback).
EXIT_BAD_INPUT = 2


def plan(
    config: str,
    overrides: list[str],
    topology: str,
    mfu: float = 0.4,
    seq: int | None = None,
    frames: int | None = None,
) -> dict[str, Any]:
    """Compiles the training step of ``config`` for ``topology`` and returns the plan as a JSON-able dict.

    Args:
        config: preset name or YAML path.
        overrides: ``key=value`` config overrides (mesh.*, train.freeze, train.precision.*, ...).
        topology: a key of TOPOLOGIES (e.g. ``v4-32``).
        mfu: the model FLOPs utilisation the second predicted step time assumes.
        seq: text tokens per row (default: the largest data bucket's).
        frames: mel frames per clip (default: the largest data bucket's).
    """
    import jax

    from trainer.backend import backend as real_backend
    from trainer.config import load_experiment
    from trainer.distributed import build_mesh, mesh_shape
    from trainer.flops import param_counts, train_flops_per_step
    from trainer.model.sharding import MESH_AXES
    from trainer.train import build_program

    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}; known: {', '.join(TOPOLOGIES)}")
    topo = TOPOLOGIES[topology]
    devices = topology_devices(topo)
    cfg = for_target_platform(load_experiment(config, overrides), devices[0].platform)
    mesh = build_mesh(cfg.mesh, devices)
    backend = real_backend(cfg)
    mcfg = backend_model_config(cfg)
    frames = frames or cfg.data.buckets[-1][0]
    seq = seq or cfg.data.buckets[-1][1]
    batch = cfg.train.global_batch_size
    clips = cfg.data.max_clips_per_row if cfg.data.packing else 0
    shape = dict(zip(MESH_AXES, mesh_shape(cfg.mesh, len(devices)), strict=True))
    # The batch axis is sharded over data x fsdp x expert; XLA's own error for a misfit is an opaque traceback.
    batch_ways = shape["data"] * shape["fsdp"] * shape["expert"]
    if batch % batch_ways:
        raise PlanInputError(
            f"train.global_batch_size={batch} does not split over the batch axes "
            f"(data x fsdp x expert = {batch_ways} on {topology}); use a multiple of {batch_ways}, "
            f"e.g. train.global_batch_size={batch_ways * max(1, -(-batch // batch_ways))}"
        )
    result: dict[str, Any] = {
        "config": config,
        "overrides": overrides,
        "topology": topology,
        "chips": topo.chips,
        "mesh": shape,
        "global_batch": batch,
        "seq_len": seq,
        "audio_frames": frames,
        "packing": cfg.data.packing,
        "clips_per_row": clips if clips else 1,
        "freeze": list(cfg.train.freeze),
        "param_dtype": mcfg.param_dtype,
        "compute_dtype": mcfg.compute_dtype,
        "remat": mcfg.remat_policy,
        "moe_impl": mcfg.moe_impl,
        "params": param_counts(mcfg),
        "hbm_budget_bytes": topo.hbm_budget_bytes,
    }
    flops = train_flops_per_step(mcfg, batch, seq, frames, cfg.train.freeze, clips or 1)
    result["flops_per_step"] = flops
    result["predicted_step_seconds"] = flops / (topo.chips * topo.peak_flops * mfu)
    result["predicted_step_seconds_at_peak"] = flops / (topo.chips * topo.peak_flops)
    result["assumed_mfu"] = mfu

    t0 = time.monotonic()
    with jax.set_mesh(mesh):
        program = build_program(cfg, backend, mesh)
        abstract_batch = _abstract_batch(mesh, batch, seq, frames, clips)
        lowered = jax.jit(
            program.step,
            in_shardings=(program.shardings, {k: v.sharding for k, v in abstract_batch.items()}),
            out_shardings=(program.shardings, None),
            donate_argnums=0,
        ).lower(program.abstract_state, abstract_batch)
        try:
            compiled = lowered.compile()
        except Exception as err:  # XLA raises JaxRuntimeError; an HBM OOM is a result, not a failure
            text = str(err)
            if "RESOURCE_EXHAUSTED" not in text and "hbm" not in text.lower():
                raise
            result.update(fits=False, per_chip_bytes=None, compile_error=text.splitlines()[0][:500])
            result["compile_seconds"] = time.monotonic() - t0
            return result
    result["compile_seconds"] = time.monotonic() - t0
    ma = compiled.memory_analysis()
    mem = {
        "argument_bytes": ma.argument_size_in_bytes,
        "output_bytes": ma.output_size_in_bytes,
        "alias_bytes": ma.alias_size_in_bytes,
        "temp_bytes": ma.temp_size_in_bytes,
        "generated_code_bytes": ma.generated_code_size_in_bytes,
    }
    # Donated state: outputs alias arguments, so count them once.
    per_chip = mem["argument_bytes"] + mem["output_bytes"] - mem["alias_bytes"] + mem["temp_bytes"]
    per_chip += mem["generated_code_bytes"]
    result["memory"] = mem
    result["per_chip_bytes"] = per_chip
    result["fits"] = per_chip <= topo.hbm_budget_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    result["xla_cost_analysis_flops_per_chip"] = float((cost or {}).get("flops", 0.0))
    return result


def for_target_platform(cfg: Any, platform: str) -> Any:
    """``cfg`` with its backend-dependent ``auto`` choices resolved for ``platform``, the target's chips.

    This process runs on the CPU (``JAX_PLATFORMS=cpu``), so a choice left to ``jax.default_backend()``
    would plan the CPU program: until this was fixed, ``moe_impl: auto`` compiled the blocked CPU dispatch
    for the TPU and the 30B plan's temporaries read 5.7 GiB per chip higher than what a TPU runs.
    """
    from trainer.model.moe import pick_impl

    model = cfg.model.model_copy(update={"moe_impl": pick_impl(cfg.model.moe_impl, platform)})
    return cfg.model_copy(update={"model": model})


def backend_model_config(cfg: Any) -> Any:
    from trainer.backend import model_config_for

    return model_config_for(cfg)


def format_plan(p: dict[str, Any]) -> str:
    """A human summary of one plan."""
    gib = 2**30
    lines = [
        f"plan: {p['config']} on {p['topology']} ({p['chips']} chips), mesh {p['mesh']}, "
        f"batch {p['global_batch']} x {p['seq_len']} tokens, {p['audio_frames']} mel frames"
        + (f", packed ({p['clips_per_row']} clip slots per row)" if p.get("packing") else ""),
        f"  params {p['params']['total'] / 1e9:.2f} B total, {p['params']['active'] / 1e9:.2f} B active; "
        f"freeze {p['freeze'] or 'none'}; dtypes {p['param_dtype']}/{p['compute_dtype']}; remat {p['remat']}; "
        f"MoE dispatch {p['moe_impl']}",
    ]
    if p.get("memory"):
        m = p["memory"]
        lines.append(
            f"  per chip: arguments {m['argument_bytes'] / gib:.2f} GiB, outputs {m['output_bytes'] / gib:.2f} "
            f"(aliased {m['alias_bytes'] / gib:.2f}), temporaries {m['temp_bytes'] / gib:.2f}, code "
            f"{m['generated_code_bytes'] / gib:.2f} -> total {p['per_chip_bytes'] / gib:.2f} GiB of "
            f"{p['hbm_budget_bytes'] / gib:.2f} GiB budget"
        )
    else:
        lines.append(f"  compile failed: {p.get('compile_error')}")
    lines.append(
        f"  fits: {'yes' if p['fits'] else 'NO'}; FLOPs/step {p['flops_per_step']:.3e} (analytic); step time "
        f"{p['predicted_step_seconds_at_peak']:.3f} s at peak, {p['predicted_step_seconds']:.3f} s at "
        f"{p['assumed_mfu']:.0%} MFU; compile {p['compile_seconds']:.0f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.aot_plan")
    parser.add_argument("--config", required=True)
    parser.add_argument("--topology", required=True)
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)  # overrides on either side of a flag
    try:
        result = plan(args.config, args.overrides, args.topology, args.mfu, args.seq, args.frames)
    except PlanInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from core.fileio import atomic_write_json

    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
