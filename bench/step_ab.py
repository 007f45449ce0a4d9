"""A/B of XLA:CPU flag sets on the bench's train step: one fresh process per set, alternated A B A B ...

    python -m bench.step_ab [--reps N] [--json FILE] [NAME=XLA_FLAGS ...]

XLA reads `XLA_FLAGS` once per process, so each set runs in its own child: it compiles the same train step
as `sawt bench model` (bench/model.py: the `small` preset, its 4 x 90-token ASR batch, forward + backward
of the loss), runs `--rounds` rounds of 3 steps, and reports wall and CPU seconds per step. Sets alternate
over `--reps` repetitions, so a change in the machine's load hits every set alike. It prints each set's
median wall and CPU time per step and its ratio against the first set; the frame records the load average
before and after (bench/harness.py) and marks a loaded run.

Default sets: `default` (no flags) and `concurrency` (`--xla_cpu_enable_concurrency_optimized_scheduler`:
XLA orders independent ops next to each other and its thunk executor runs them at once, which can only pay
when a core is free, i.e. on a quiet machine). A wall-clock ratio from a loaded run measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

DEFAULT_SETS = {"default": "", "concurrency": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}


def parse_sets(specs: list[str]) -> dict[str, str]:
    """`NAME=FLAGS` arguments (FLAGS may be empty) into an ordered dict; the defaults without any."""
    if not specs:
        return dict(DEFAULT_SETS)
    sets: dict[str, str] = {}
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"{spec!r}: expected NAME=XLA_FLAGS (FLAGS may be empty)")
        sets[name] = flags
    return sets


def summarise(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Per set: median wall and CPU seconds per step, and the first set's median over this set's."""
    base = next(iter(samples))
    out = {}
    for name, s in samples.items():
        wall, cpu = float(np.median(s["wall"])), float(np.median(s["cpu"]))
        out[name] = {
            "wall_s_per_step": wall,
            "cpu_s_per_step": cpu,
            f"wall_speedup_vs_{base}": float(np.median(samples[base]["wall"])) / wall,
            f"cpu_speedup_vs_{base}": float(np.median(samples[base]["cpu"])) / cpu,
            "n": len(s["wall"]),
        }
    return out


def child(rounds: int) -> None:
    """Compiles the bench's train step in this process and prints one JSON line of its timings."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from flax import nnx

    from bench.model import asr_batch, our_train_step
    from trainer.config import load_experiment
    from trainer.model.thinker import Thinker

    cfg = load_experiment("small", []).model
    run = our_train_step(Thinker(cfg, rngs=nnx.Rngs(0)), asr_batch(cfg, 4, 4.0, 24))
    wall, cpu = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(3):
            loss = run()
        wall.append((time.perf_counter() - t0) / 3)
        cpu.append((time.process_time() - c0) / 3)
    print(json.dumps({"loss": loss, "wall": wall, "cpu": cpu}), flush=True)


def main(argv: list[str] | None = None) -> int:
    from bench.harness import ThreadBudget, add_cli_flags, bench_run, emit

    parser = argparse.ArgumentParser(prog="python -m bench.step_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", help="NAME=XLA_FLAGS (default: default= and concurrency=...)")
    parser.add_argument("--reps", type=int, default=3, help="alternations of the sets (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of 3 steps per child (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_cli_flags(parser)
    args = parser.parse_args(argv)
    if args.child:
        child(args.rounds)
        return 0
    sets = parse_sets(args.sets)
    budget = ThreadBudget.for_threads(args.threads)
    with bench_run("step_ab", refuse_loaded=args.refuse_loaded) as results:
        budget.apply_here()  # the children inherit the cores and the env
        samples = {name: {"wall": [], "cpu": []} for name in sets}
        losses = {}
        for rep in range(args.reps):
            for name, flags in sets.items():
                env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
                cmd = [sys.executable, "-m", "bench.step_ab", "--child", "--rounds", str(args.rounds)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                if proc.returncode or not lines:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                got = json.loads(lines[-1])
                samples[name]["wall"] += got["wall"]
                samples[name]["cpu"] += got["cpu"]
                losses[name] = got["loss"]
                print(
                    f"{name} rep {rep}: {1e3 * np.median(got['wall']):.1f} ms wall, "
                    f"{1e3 * np.median(got['cpu']):.1f} ms CPU per step (load {os.getloadavg()[0]:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
        results.update(sets=sets, losses=losses, thread_budget=budget.describe(), figures=summarise(samples))
    base = next(iter(sets))
    lines = [
        f"{name:14s} wall {1e3 * f['wall_s_per_step']:7.1f} ms  CPU {1e3 * f['cpu_s_per_step']:7.1f} ms per "
        f"step  vs {base}: wall {f[f'wall_speedup_vs_{base}']:.2f}x, CPU {f[f'cpu_speedup_vs_{base}']:.2f}x"
        for name, f in results["figures"].items()
    ]
    lines.append(
        f"load average {results['load_average_before']:.2f} before, {results['load_average_after']:.2f} after: "
        f"loaded={results['loaded']}"
    )
    return emit(results, "\n".join(lines), args.json)


if __name__ == "__main__":
    sys.exit(main())
