"""`sawt bench serve`: the server's throughput, latency and overload behaviour.

Peer: the same `sawt serve` taking one request at a time (``--max-batch 1``), measured in the same run on the
same tiny checkpoint and audio. Figures:

- throughput (requests/s) and p50/p99 latency with 1, 8 and 32 concurrent closed-loop clients, for the
  batched server (``--max-batch 32``) and the peer; ``throughput_speedup_32_vs_1`` = batched at 32 clients /
  peer at 32 clients (the goal is >= 4);
- overload: an open-loop arrival rate of twice the batched server's measured capacity, with a bounded queue:
  the fraction of requests shed (429), p99 latency of the served ones, and the server's RSS before, at peak
  and after (it must stay bounded: shedding, not queueing without limit).

The model is a random thinker on CPU, widened so that a decode step is dominated by reading the weights
(as on a TPU, where decoding is memory-bound) rather than by per-row arithmetic: with the tiny preset a CPU
decode step costs about as much per row at 32 rows as at 1, and no batching can pay off. Absolute figures
say little about a TPU; the ratios say how much continuous batching buys over serial serving on the same
hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = "sawt-asr"
# Wide and shallow: ~6 M parameters in the decoder, so a one-row decode step is dominated by reading weights.
BENCH_MODEL = (
    "model.text.hidden_size=512",
    "model.text.num_hidden_layers=2",
    "model.text.num_attention_heads=8",
    "model.text.num_key_value_heads=8",
    "model.text.head_dim=64",
    "model.text.mrope_section=[12,10,10]",
    "model.text.num_experts=2",
    "model.text.num_experts_per_tok=2",
    "model.text.moe_intermediate_size=512",
    "model.audio.output_dim=512",
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


def run(quick: bool, log=print) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests" / "serve"))
    from tiny_checkpoint import make_tiny_checkpoint

    per_client = 2 if quick else 4
    audio = _wav(AUDIO_SECONDS)
    max_new = 64
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "setup": {
            "audio_seconds": AUDIO_SECONDS,
            "max_new_tokens": max_new,
            "model_overrides": list(BENCH_MODEL),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        log("making a tiny checkpoint ...")
        checkpoint = make_tiny_checkpoint(Path(tmp) / "ckpt", overrides=BENCH_MODEL)
        for name, max_batch in (("batched", 32), ("serial", 1)):
            log(f"starting the {name} server (--max-batch {max_batch}) ...")
            server = Server(
                checkpoint, max_batch, max_queue=256, max_new_tokens=max_new, window_s=AUDIO_SECONDS
            )
            try:
                rows = []
                for clients in (1, 8, 32):
                    # The serial server needs ~30x longer per request: fewer requests keep its run short.
                    n = max(8, clients * per_client) if name == "batched" else max(6, clients)
                    row = asyncio.run(closed_loop(server.url, audio, clients, n))
                    log(f"  {name} {clients:>2} clients: {row['throughput_rps']:.2f} req/s "
                        f"({row['tokens_per_request']:.0f} tokens each), p50 {row['p50_seconds']:.3f} s, "
                        f"p99 {row['p99_seconds']:.3f} s")  # fmt: skip
                    rows.append(row)
                results[name] = rows
            finally:
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
    results["overload_shed_rate"] = results["overload"]["shed_rate"]
    results["overload_p99_seconds"] = results["overload"]["p99_seconds_served"]
    results["overload_rss_growth_mb"] = (
        results["overload"]["rss_mb_peak"] - results["overload"]["rss_mb_start"]
    )
    return results


def main(args: argparse.Namespace) -> int:
    results = run(bool(getattr(args, "quick", False)))
    headline = {k: v for k, v in results.items() if not isinstance(v, dict | list)}
    print(json.dumps(headline, indent=2))
    if getattr(args, "json", None):
        from sawt.fileio import atomic_write_json

        atomic_write_json(args.json, results)
    return 0
