"""`sawt bench pack`: packed batches (``data.packing``) against bucketed ones, measured in the same run.

Three sections:

* **fill** (index only): a synthetic split index of the seed's 520,296 training clips, with its duration mix
  (lognormal, mean 5.46 s, 0.5-30 s; `seed_durations`) planned both ways with the 30B preset's data
  config (five buckets, 32 rows per step): the fraction of the computed decoder tokens and mel frames that
  carry real data (`tools.epoch_plan.fill_stats`, the plans the trainer runs). Transcripts are assumed at
  8 tokens per second (Poisson; the preset's own sizing assumption) behind a 17-token ChatML prompt
  scaffolding (Qwen's template around the audio placeholders, plus ``<|im_end|>``).
* **epoch**: those plans priced on a v4-32 (`tools.epoch_plan.estimate`,
  analytic FLOPs of every step's shape, at the chip's peak and at 40% MFU): the same figures `sawt plan
  --fill FILE` prints from this run's JSON.
* **throughput**: the real train step on this CPU (the `small` preset's model) over one epoch of a few
  hundred clips of real audio (speech-like waveforms of seed-mix durations, Arabic transcripts at 8 tokens
  per second of the demo tokenizer) through the real loader, both ways, with the same rows per step and the
  same largest row shape (the per-step token budget the 30B preset's memory is planned for). Batches are
  featurised first; each side's epoch of steps is timed (compiles excluded), the sides interleaved round
  by round. Useful tokens = valid decoder tokens; the ratio is useful tokens per second packed over
  bucketed.

The harness (bench/harness.py) records the machine and the load average before and after; a run above half
the cores is marked ``"loaded": true`` (or refused with ``--refuse-loaded``).
JSON: the issue's headline keys at the top level, ``fill_stats`` (what `sawt plan --fill` reads) and each
section's details under ``sections``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import emit

SEED_MEAN_S = 5.46  # 216.12 GiB of float32 16 kHz audio over 663,577 records
SEED_RANGE_S = (0.5, 30.0)
SEED_SIGMA = 0.75  # log-space spread of the lognormal (assumed; the seed's own histogram is not here)
SEED_TRAIN_CLIPS = 520_296
TRANSCRIPT_TOKENS_PER_S = 8.0
SCAFFOLD_TOKENS = 17  # prompt without the audio placeholders (16) + <|im_end|>
TOPOLOGY, MFU = "v4-32", 0.4
HEADLINE = (
    "token_fill_packed",
    "token_fill_bucketed",
    "frame_fill_packed",
    "frame_fill_bucketed",
    "useful_tokens_per_s_speedup",
    "epoch_hours_v4_32_packed",
    "epoch_hours_v4_32_bucketed",
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _truncated_mean(mu: float, sigma: float, lo: float, hi: float) -> float:
    phi = lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))  # noqa: E731
    a, b = (math.log(lo) - mu) / sigma, (math.log(hi) - mu) / sigma
    return math.exp(mu + sigma**2 / 2) * (phi(b - sigma) - phi(a - sigma)) / (phi(b) - phi(a))


def seed_durations(n: int, rng: np.random.Generator, sigma: float = SEED_SIGMA) -> np.ndarray:
    """``n`` clip durations (s): lognormal truncated to the seed's range, its mean exactly the seed's."""
    lo, hi = SEED_RANGE_S
    a, b = math.log(lo), math.log(hi)
    for _ in range(100):  # bisection on mu: the truncated mean grows with it
        mu = (a + b) / 2
        if _truncated_mean(mu, sigma, lo, hi) < SEED_MEAN_S:
            a = mu
        else:
            b = mu
    out = np.zeros(0)
    while out.size < n:
        draw = np.exp(rng.normal(mu, sigma, 2 * n))
        out = np.concatenate([out, draw[(draw >= lo) & (draw <= hi)]])
    return out[:n]


def _data_config():
    from trainer.config import load_experiment

    return load_experiment("qwen3-omni-30b-a3b", [])


# --------------------------------------------------------------------------------------------- fill


def bench_fill(quick: bool) -> dict[str, Any]:
    """Fill of both plans on a synthetic seed-mix index (see the module docstring); ``fill_stats`` too."""
    from tools.epoch_plan import fill_stats
    from trainer.data.batching import SplitIndex
    from trainer.data.packing import ClipCosts
    from trainer.model.geometry import encoder_token_count

    cfg = _data_config()
    # The whole epoch (the padding rows of its last global batch weigh as they will), or 20,000 clips quick.
    n = 20_000 if quick else SEED_TRAIN_CLIPS
    rng = np.random.default_rng(13)
    duration = seed_durations(n, rng)
    index = SplitIndex(duration.astype(np.float32), np.zeros(n, np.int32), ("seed",))
    frames = index.num_frames()
    transcript = rng.poisson(TRANSCRIPT_TOKENS_PER_S * duration)
    costs = ClipCosts.of(frames, SCAFFOLD_TOKENS + encoder_token_count(frames) + transcript)
    t0 = time.process_time()
    stats = fill_stats(index, costs, cfg.data, cfg.train.global_batch_size)
    plan_seconds = time.process_time() - t0
    stats["epoch_clips"] = SEED_TRAIN_CLIPS
    stats["source"] = "sawt bench pack (synthetic seed-mix index)"
    return {
        "fill_stats": stats,
        "clips": n,
        "duration_mean_s": float(duration.mean()),
        "duration_quantiles_s": dict(
            zip(
                ("p10", "p50", "p90", "p99"),
                np.quantile(duration, [0.1, 0.5, 0.9, 0.99]).tolist(),
                strict=True,
            )
        ),
        "sigma": SEED_SIGMA,
        "transcript_tokens_per_s": TRANSCRIPT_TOKENS_PER_S,
        "scaffold_tokens": SCAFFOLD_TOKENS,
        "plans_cpu_seconds": plan_seconds,
        "token_fill_packed": stats["packed"]["token_fill"],
        "token_fill_bucketed": stats["bucketed"]["token_fill"],
        "frame_fill_packed": stats["packed"]["frame_fill"],
        "frame_fill_bucketed": stats["bucketed"]["frame_fill"],
    }


def bench_epoch(fill: dict[str, Any]) -> dict[str, Any]:
    """The v4-32 epoch of the seed's training clips, both ways, from the fill section's plans."""
    from tools.aot_plan import TOPOLOGIES
    from tools.epoch_plan import estimate

    cfg = _data_config()
    topo = TOPOLOGIES[TOPOLOGY]
    epoch = estimate(fill["fill_stats"], cfg.model, cfg.train.freeze, topo.chips, topo.peak_flops, MFU)
    return {
        "epoch": epoch,
        "epoch_hours_v4_32_packed": epoch["packed"]["hours_at_mfu"],
        "epoch_hours_v4_32_bucketed": epoch["bucketed"]["hours_at_mfu"],
    }


# --------------------------------------------------------------------------------------- throughput


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    from bench.features import _speechlike as speechlike

    return speechlike(seconds, seed)


def _write_split(root: Path, count: int, rng: np.random.Generator) -> tuple[Path, Path]:
    """A train split of ``count`` seed-mix clips with transcripts at ~8 demo-tokenizer tokens per second."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from tools.data.synth import read_sentences, tokenizer_training_text, write_tokenizer
    from trainer.data.example import encode_speech
    from trainer.data.text import load_tokenizer

    sentences = [s.text for s in read_sentences()]
    write_tokenizer(tokenizer_training_text(sentences), root / "tokenizer")
    tok = load_tokenizer(root / "tokenizer")
    words = " ".join(sentences).split()
    split = root / "data" / "train"
    split.mkdir(parents=True)
    writer = ArrayRecordWriter(str(split / "train-00000-of-00001.array_record"), "group_size:1")
    durations = seed_durations(count, rng)
    for i, seconds in enumerate(durations):
        want = max(1, int(rng.poisson(TRANSCRIPT_TOKENS_PER_S * seconds)))
        start = int(rng.integers(0, len(words)))
        text, k = [], start
        while len(tok.encode(" ".join(text))) < want:
            text.append(words[k % len(words)])
            k += 1
        wave = _speechlike(float(seconds), seed=i)
        writer.write(encode_speech(wave, " ".join(text), "seedmix", f"clip-{i:06d}"))
    writer.close()
    return root / "data", root / "tokenizer"


def bench_throughput(quick: bool) -> dict[str, Any]:
    """Useful tokens per second of the real train step, packed over bucketed (see the module docstring)."""
    import jax

    from trainer.backend import backend as real_backend
    from trainer.config import load_experiment
    from trainer.data.loader import make_loader
    from trainer.data.text import load_tokenizer
    from trainer.distributed import build_mesh, to_global
    from trainer.train import build_program
    from trainer.train_step import init_state

    count, rounds, rows = (48, 1, 8) if quick else (240, 3, 8)
    seed_cfg = _data_config().data
    buckets = "[" + ",".join(f"[{f},{t}]" for f, t in seed_cfg.buckets) + "]"
    with tempfile.TemporaryDirectory(prefix="sawt-bench-pack-") as tmp:
        data_dir, tok_dir = _write_split(Path(tmp), count, np.random.default_rng(7))
        tok = load_tokenizer(tok_dir)
        base = [
            f"data.dir={data_dir}",
            f"tokenizer.dir={tok_dir}",
            f"data.buckets={buckets}",
            "data.min_duration=0.5",
            "data.max_duration=30.0",
            "data.source_weights={}",
            f"data.max_clips_per_row={seed_cfg.max_clips_per_row}",
            f"train.global_batch_size={rows}",
            "mesh.fsdp=1",
            "mesh.data=-1",
        ]
        sides: dict[str, Any] = {}
        for name, packing in (("bucketed", "false"), ("packed", "true")):
            cfg = load_experiment("small", [*base, f"data.packing={packing}"])
            loader = make_loader(cfg.data, tok, "train", 0, 1, cfg.seed, rows, num_epochs=1)
            batches = list(loader)
            sides[name] = {"cfg": cfg, "batches": batches, "skipped": dict(loader.skipped)}
        backend = real_backend(sides["packed"]["cfg"])  # the same model either way
        mesh = build_mesh(sides["packed"]["cfg"].mesh)
        with jax.set_mesh(mesh):
            program = build_program(sides["packed"]["cfg"], backend, mesh)
            step = program.jitted_step()
            state = jax.jit(
                lambda: init_state(program.init_params(0), program.tx, 0), out_shardings=program.shardings
            )()
            for side in sides.values():
                side["global"] = [to_global(mesh, b) for b in side["batches"]]
                side["useful_tokens"] = int(sum(int(b["token_mask"].sum()) for b in side["batches"]))
                side["clips"] = sum(s == "ok" for b in side["batches"] for s in b["meta"]["status"])
                side["steps"] = len(side["batches"])
                side["seconds"] = []
                t0 = time.monotonic()
                shapes = {}
                for batch in side["global"]:  # one step per shape first: compiles stay out of the timing
                    shapes.setdefault(batch["input_ids"].shape + batch["audio_mel"].shape, batch)
                for batch in shapes.values():
                    state, m = step(state, batch)
                    jax.block_until_ready(m["loss"])
                side["compile_seconds"] = time.monotonic() - t0
            for _ in range(rounds):  # bucketed epoch, packed epoch, bucketed epoch, ...
                for side in sides.values():
                    t0 = time.perf_counter()
                    for batch in side["global"]:
                        state, m = step(state, batch)
                    jax.block_until_ready(m["loss"])
                    side["seconds"].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"clips": count, "rows_per_step": rows, "rounds": rounds, "model": "small"}
    for name, side in sides.items():
        median = statistics.median(side["seconds"])
        out[name] = {
            "steps": side["steps"],
            "clips": side["clips"],
            "skipped": side["skipped"],
            "useful_tokens": side["useful_tokens"],
            "epoch_seconds": side["seconds"],
            "epoch_seconds_median": median,
            "useful_tokens_per_s": side["useful_tokens"] / median,
            "compile_seconds": side["compile_seconds"],
        }
    per_round = [
        (out["packed"]["useful_tokens"] / p) / (out["bucketed"]["useful_tokens"] / b)
        for p, b in zip(sides["packed"]["seconds"], sides["bucketed"]["seconds"], strict=True)
    ]
    out["useful_tokens_per_s_speedup"] = (
        out["packed"]["useful_tokens_per_s"] / out["bucketed"]["useful_tokens_per_s"]
    )
    out["speedup_per_round"] = per_round
    return out


# ---------------------------------------------------------------------------------------------- run


def run(quick: bool, refuse_loaded: bool = False, threads: int | None = None) -> dict[str, Any]:
    """All three sections, framed by `bench.harness.bench_run` (machine, load before and after, ``loaded``)."""
    from bench.harness import ThreadBudget, bench_run

    budget = ThreadBudget.for_threads(threads)
    with bench_run("pack", refuse_loaded=refuse_loaded, log=_log) as results:
        budget.apply_here()  # before JAX creates its CPU client: the affinity sizes its thread pools
        results["quick"] = quick
        results["thread_budget"] = {
            **budget.describe(),
            "sides": "both sides run the same jitted train step in this process, on the same cores",
        }
        results["sections"] = {}
        t0 = time.monotonic()
        fill = bench_fill(quick)
        results["sections"]["fill"] = {k: v for k, v in fill.items() if k != "fill_stats"}
        results["fill_stats"] = fill["fill_stats"]
        results["sections"]["epoch"] = bench_epoch(fill)
        _log(f"pack: fill and epoch done in {time.monotonic() - t0:.1f} s; throughput run next")
        results["sections"]["throughput"] = bench_throughput(quick)
        for section in results["sections"].values():
            for key in HEADLINE:
                if key in section:
                    results[key] = section[key]
    return results


def report(results: dict[str, Any]) -> str:
    lines = [f"{'figure':<32} {'value':>10}", "-" * 43]
    for key in HEADLINE:
        lines.append(f"{key:<32} {results[key]:>10.3f}")
    t = results["sections"]["throughput"]
    lines.append(
        f"(throughput: {t['packed']['steps']} packed vs {t['bucketed']['steps']} bucketed steps of "
        f"{t['rows_per_step']} rows over {t['clips']} clips; load average {results['load_average_before']:.2f} "
        f"-> {results['load_average_after']:.2f}{', LOADED' if results['loaded'] else ''})"
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Entry point of `sawt bench pack` (``args.quick``, ``args.json``, the harness's flags)."""
    results = run(
        bool(getattr(args, "quick", False)),
        refuse_loaded=bool(getattr(args, "refuse_loaded", False)),
        threads=getattr(args, "threads", None),
    )
    return emit(results, report(results), getattr(args, "json", None))


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone(main, __doc__))
