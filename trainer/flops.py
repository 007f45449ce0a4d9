"""FLOPs accounting shared by the trainer's MFU gauge and `sawt plan`, plus a table of chip peaks.

MFU = analytic model FLOPs per step / step time / (peak FLOP/s per chip x chips).
"""

from __future__ import annotations

import time
from typing import Any

# Dense bf16 peak FLOP/s per chip (vendor figures). Keys are jax `device_kind` strings.
CHIP_PEAK_FLOPS: dict[str, float] = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v6 lite": 918e12,
}
# HBM per chip in bytes, and what XLA budgets of it (aot-tpu.md: 30.75 GiB of 32 on v4).
CHIP_HBM_BYTES: dict[str, float] = {
    "TPU v4": 32 * 2**30,
    "TPU v5 lite": 16 * 2**30,
    "TPU v5": 95 * 2**30,
    "TPU v6 lite": 32 * 2**30,
}
CHIP_HBM_BUDGET_BYTES: dict[str, float] = {"TPU v4": 30.75 * 2**30}

_measured_cpu_peak: float | None = None


def measure_cpu_peak_flops(n: int = 512, repeats: int = 3) -> float:
    """FLOP/s of a float32 n x n matmul on one CPU device (best of ``repeats``): the CPU 'peak'."""
    import jax
    import jax.numpy as jnp

    global _measured_cpu_peak
    if _measured_cpu_peak is None:
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        _measured_cpu_peak = 2 * n**3 / best
    return _measured_cpu_peak


def device_peak_flops(device: Any, cpu_peak_flops: float = 0.0) -> float:
    """Peak FLOP/s of one device: the chip table for TPUs; configured or measured for CPU."""
    kind = getattr(device, "device_kind", "cpu")
    if kind in CHIP_PEAK_FLOPS:
        return CHIP_PEAK_FLOPS[kind]
    if getattr(device, "platform", "cpu") == "cpu":
        return cpu_peak_flops or measure_cpu_peak_flops()
    raise ValueError(f"no peak FLOP/s known for device kind {kind!r}; add it to trainer/flops.py")
