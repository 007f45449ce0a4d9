"""`sawt bench serve`: the server's throughput, latency and overload behaviour.

Peer: the same `sawt serve` taking one request at a time (``--max-batch 1``), measured in the same run on the
same tiny checkpoint and audio. Figures:

- throughput (requests/s) and p50/p99 latency with 1, 8 and 32 concurrent closed-loop clients, for the
  batched server (``--max-batch 32``) and the peer; ``throughput_speedup_32_vs_1`` = batched at 32 clients /
  peer at 32 clients (the goal is >= 4);
- overload: an open-loop arrival rate of twice the batched server's measured capacity, with a bounded queue:
  the fraction of requests shed (429), p99 latency of the served ones, and the server's RSS before, at peak
  and after (it must stay bounded: shedding, not queueing without limit).

The model is a random thinker on CPU, shaped so that a one-row decode step is dominated by the weights
(~63 M decoder parameters, 250 MB in fp32, far beyond the CPU's caches; GQA with 2 KV heads and a short cache,
so the KV cache is small next to them): that is the regime of the real thinker, whose decode step reads ~3 B
active parameters per token from HBM, and the one continuous batching is for. A tiny model (a few M
parameters) sits in cache, its step costs the same per row at 32 rows as at 1, and no batching can pay off.
Before the servers, the engine itself (``JaxRunner``, no HTTP) is timed: prefill per request and one decode
step over 1, 8 and 32 rows (``engine_profile`` in the JSON), which bounds what batching can buy on this
machine. Absolute figures say little about a TPU; the ratios say how much continuous batching buys over
serial serving on the same hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import emit

REPO = Path(__file__).resolve().parents[1]
MODEL = "sawt-asr"
# Weight-dominated at decode, like the real thinker (see the module docstring): hidden 1024, 4 layers, a
# dense 2-expert MoE of width 2048 (top-2 of 2: every row reads the same expert weights, as a batch of rows
# does at decode), 8 query / 2 KV heads. ~63 M decoder parameters (250 MB fp32).
BENCH_MODEL = (
    "model.text.hidden_size=1024",
    "model.text.num_hidden_layers=4",
    "model.text.num_attention_heads=8",
    "model.text.num_key_value_heads=2",
    "model.text.head_dim=128",
    "model.text.mrope_section=[24,20,20]",
    "model.text.num_experts=2",
    "model.text.num_experts_per_tok=2",
    "model.text.moe_intermediate_size=2048",
    "model.audio.output_dim=1024",
    "model.moe_impl=dense",  # 2 experts, top-2: every expert runs anyway; no dispatch cost
)
AUDIO_SECONDS = 1.0


def _wav(seconds: float) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * 16000)) / 16000
    wave = (0.2 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Server:
    """A `sawt serve` subprocess."""

    def __init__(
        self, checkpoint: Path, max_batch: int, max_queue: int, max_new_tokens: int, window_s: float
    ):
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "sawt", "serve", "--checkpoint", str(checkpoint), "--port", str(self.port),
               "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--max-new-tokens",
               str(max_new_tokens), "--window-s", str(window_s), "--overlap-s", "0.25", "--log-level", "warning"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sawt serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.2)

    def rss(self) -> int:
        return _rss_bytes(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()  # reaped, so its CPU time is the suite's own (harness.CpuMeter), not a neighbour's


async def _post(client: Any, url: str, audio: bytes) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = await client.post(
        url + "/v1/audio/transcriptions", data={"model": MODEL}, files={"file": ("a.wav", audio, "audio/wav")}
    )
    return r.status_code, time.perf_counter() - t0


def _generated_tokens(url: str) -> float:
    import httpx

    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("sawt_generation_tokens_total "):
            return float(line.split()[1])
    return 0.0


def _pct(latencies: list[float], q: float) -> float:
    return float(np.percentile(latencies, q)) if latencies else float("nan")


async def closed_loop(url: str, audio: bytes, clients: int, requests: int) -> dict[str, Any]:
    """``clients`` clients each sending back-to-back requests until ``requests`` are done in total."""
    import httpx

    latencies: list[float] = []
    errors = 0
    remaining = requests
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                code, dt = await _post(client, url, audio)
                if code == 200:
                    latencies.append(dt)
                else:
                    errors += 1

        await _post(client, url, audio)  # connection and first-request warm-up, not counted
        tokens0 = _generated_tokens(url)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
        tokens = _generated_tokens(url) - tokens0
    return {
        "latencies": latencies,
        "wall_seconds": wall,
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / wall,
        "generated_tokens_per_s": tokens / wall,
        "tokens_per_request": tokens / max(1, len(latencies)),
        "p50_seconds": _pct(latencies, 50),
        "p99_seconds": _pct(latencies, 99),
    }


async def open_loop(server: Server, audio: bytes, rate_rps: float, seconds: float) -> dict[str, Any]:
    """Requests arrive at ``rate_rps`` regardless of responses (overload); samples the server's RSS."""
    import httpx

    latencies: list[float] = []
    codes: dict[int, int] = {}
    rss = [server.rss()]
    tasks = []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one() -> None:
            code, dt = await _post(client, server.url, audio)
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                latencies.append(dt)

        t0 = time.perf_counter()
        n = int(rate_rps * seconds)
        for i in range(n):
            delay = t0 + i / rate_rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
            if i % max(1, int(rate_rps / 4)) == 0:
                rss.append(server.rss())
        await asyncio.gather(*tasks)
    rss.append(server.rss())
    total = sum(codes.values())
    return {
        "rate_rps": rate_rps,
        "requests": total,
        "codes": {str(k): v for k, v in sorted(codes.items())},
        "shed_rate": codes.get(429, 0) / max(1, total),
        "p99_seconds_served": _pct(latencies, 99),
        "rss_mb_start": rss[0] / 2**20,
        "rss_mb_peak": max(rss) / 2**20,
        "rss_mb_end": rss[-1] / 2**20,
    }


def engine_profile(checkpoint: Path, max_batch: int, max_new_tokens: int, repeats: int = 8) -> dict[str, Any]:
    """Times the engine without HTTP: prefill of one request, and one decode step over 1, 8 and 32 rows.

    The same `JaxRunner` the server builds (same checkpoint, slots, buckets); medians over ``repeats`` calls
    after a warm-up. ``decode_ms_per_step[r] / decode_ms_per_step[1]`` is what a step over r rows costs
    relative to one row: the closer to 1, the more batching can buy.
    """
    from types import SimpleNamespace

    from inference_server.jax_runner import JaxRunner
    from inference_server.model_engine import TextSide
    from trainer.model.geometry import encoder_token_count
    from trainer.model_checkpoint import load_model_checkpoint

    config, params = load_model_checkpoint(checkpoint)
    overhead = TextSide.from_tokenizer_dir(str(checkpoint)).prompt_overhead()
    runner = JaxRunner(
        config, params, num_slots=max_batch, prompt_overhead=overhead + 8, window_s=AUDIO_SECONDS,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    frames = int(AUDIO_SECONDS * 100)
    n_audio = int(encoder_token_count(frames, config.audio.n_window))
    ids = np.concatenate([[1], np.full(n_audio, config.tokens.audio_token_id), np.full(overhead - 1, 2)])
    prompt = SimpleNamespace(
        input_ids=ids.astype(np.int32),
        audio_mel=np.zeros((config.audio.num_mel_bins, frames), np.float32),
        audio_frames=frames,
        audio_tokens=n_audio,
        audio_offset=1,
    )

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(times))

    prefill_ms = median_ms(lambda: runner.prefill(0, prompt))
    decode_ms = {}
    for rows in (1, 8, 32):
        active = np.zeros(max_batch, bool)
        active[:rows] = True
        decode_ms[rows] = median_ms(lambda a=active: runner.decode(np.zeros(max_batch, np.int32), a))
    n_params = sum(int(np.prod(x.shape)) for x in _leaves(params["model"])) + int(
        np.prod(params["lm_head"]["kernel"].shape)
    )
    return {
        "decoder_parameters": n_params,
        "prompt_tokens": len(ids),
        "cache_len": runner.max_seq_len,
        "prefill_ms": prefill_ms,
        "decode_ms_per_step": decode_ms,
        "decode_cost_ratio_32_vs_1": decode_ms[32] / decode_ms[1],
    }


def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [tree]


def _combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One client count's interleaved rounds as one row: pooled requests and latencies, per-round throughput."""
    latencies = [x for r in rounds for x in r.pop("latencies")]
    wall = sum(r["wall_seconds"] for r in rounds)
    requests = sum(r["requests"] for r in rounds)
    tokens = sum(r["generated_tokens_per_s"] * r["wall_seconds"] for r in rounds)
    return {
        "clients": rounds[0]["clients"],
        "requests": requests,
        "errors": sum(r["errors"] for r in rounds),
        "throughput_rps": requests / wall,
        "throughput_rps_rounds": [r["throughput_rps"] for r in rounds],
        "generated_tokens_per_s": tokens / wall,
        "tokens_per_request": tokens / max(1, requests),
        "p50_seconds": _pct(latencies, 50),
        "p99_seconds": _pct(latencies, 99),
    }


# The two sides: the batched server and its peer, the same server taking one request at a time.
SIDES = {"batched": 32, "serial": 1}


def run(quick: bool, log=print, refuse_loaded: bool = False, threads: int | None = None) -> dict[str, Any]:
    from bench.harness import ThreadBudget, bench_run

    with bench_run("serve", refuse_loaded=refuse_loaded) as results:
        budget = ThreadBudget.for_threads(threads)
        budget.apply_here()  # the servers and the load generator inherit the cores and the thread counts
        results["thread_budget"] = {
            **budget.describe(),
            "ours": f"both servers (and the load generator) on the same {budget.threads} core(s); XLA's "
            "pools sized by that affinity",
            "peer": "the same server binary and checkpoint, --max-batch 1",
        }
        _run(quick, log, results)
    return results


def _run(quick: bool, log, results: dict[str, Any]) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.checkpoint import make_tiny_checkpoint

    rounds = 1 if quick else 2
    per_client = 2  # requests per client per round (batched side)
    audio = _wav(AUDIO_SECONDS)
    max_new = 64
    results["setup"] = {
        "audio_seconds": AUDIO_SECONDS,
        "max_new_tokens": max_new,
        "model_overrides": list(BENCH_MODEL),
        "rounds": rounds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        log("making a tiny checkpoint ...")
        checkpoint = make_tiny_checkpoint(Path(tmp) / "ckpt", overrides=BENCH_MODEL)
        log("timing the engine directly (no HTTP) ...")
        prof = engine_profile(checkpoint, 32, max_new, repeats=4 if quick else 8)
        results["engine_profile"] = prof
        steps = ", ".join(f"{r} rows {ms:.1f} ms" for r, ms in prof["decode_ms_per_step"].items())
        log(f"  {prof['decoder_parameters'] / 1e6:.1f} M decoder parameters; prefill {prof['prefill_ms']:.1f} ms "
            f"({prof['prompt_tokens']} prompt tokens); decode step: {steps}")  # fmt: skip
        # Both servers run at once and take turns (batched, serial, batched, ...): a burst of load on the
        # shared machine hits both sides, not one. An idle server sleeps on its socket.
        log("starting the batched (--max-batch 32) and serial (--max-batch 1) servers ...")
        servers: dict[str, Server] = {}
        try:
            for name, max_batch in SIDES.items():
                servers[name] = Server(
                    checkpoint, max_batch, max_queue=256, max_new_tokens=max_new, window_s=AUDIO_SECONDS
                )
            rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SIDES}
            for clients in (1, 8, 32):
                per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in SIDES}
                for _ in range(rounds):
                    for name, server in servers.items():
                        # The serial server needs ~30x longer per request: fewer requests keep its run short.
                        n = max(8, clients * per_client) if name == "batched" else max(4, clients // rounds)
                        per_round[name].append(asyncio.run(closed_loop(server.url, audio, clients, n)))
                for name in SIDES:
                    row = _combine(per_round[name])
                    log(f"  {name} {clients:>2} clients: {row['throughput_rps']:.2f} req/s "
                        f"({row['tokens_per_request']:.0f} tokens each), p50 {row['p50_seconds']:.3f} s, "
                        f"p99 {row['p99_seconds']:.3f} s")  # fmt: skip
                    rows[name].append(row)
            results.update(rows)
        finally:
            for server in servers.values():
                server.close()
        capacity = results["batched"][-1]["throughput_rps"]
        log(
            f"overload: 2 x capacity = {2 * capacity:.1f} req/s for {5 if quick else 15} s, --max-queue 32 ..."
        )
        server = Server(checkpoint, 32, max_queue=32, max_new_tokens=max_new, window_s=AUDIO_SECONDS)
        try:
            results["overload"] = asyncio.run(open_loop(server, audio, 2 * capacity, 5.0 if quick else 15.0))
            assert server.proc.poll() is None, "server died under overload"
        finally:
            server.close()
    b = {r["clients"]: r for r in results["batched"]}
    s = {r["clients"]: r for r in results["serial"]}
    results["throughput_speedup_32_vs_1"] = b[32]["throughput_rps"] / s[32]["throughput_rps"]
    results["throughput_speedup_8_vs_1"] = b[8]["throughput_rps"] / s[8]["throughput_rps"]
    results["p99_seconds_32"] = b[32]["p99_seconds"]
    results["p99_seconds_32_serial"] = s[32]["p99_seconds"]
    results["decode_cost_ratio_32_vs_1"] = results["engine_profile"]["decode_cost_ratio_32_vs_1"]
    results["overload_shed_rate"] = results["overload"]["shed_rate"]
    results["overload_p99_seconds"] = results["overload"]["p99_seconds_served"]
    results["overload_rss_growth_mb"] = (
        results["overload"]["rss_mb_peak"] - results["overload"]["rss_mb_start"]
    )


def main(args: argparse.Namespace) -> int:
    results = run(
        bool(getattr(args, "quick", False)),
        refuse_loaded=bool(getattr(args, "refuse_loaded", False)),
        threads=getattr(args, "threads", None),
    )
    headline = {k: v for k, v in results.items() if not isinstance(v, dict | list)}
    return emit(results, json.dumps(headline, indent=2), getattr(args, "json", None))
