"""`sawt bench model`: our JAX thinker against HF PyTorch on the same weights, and conversion memory.

Figures (each measured in this run):
* train: forward+backward tokens/s on the `small` preset (an ASR batch: audio + prompt + transcript, loss
  with the router aux term) against HF `Qwen3OmniMoeThinkerForConditionalGeneration` on the same weights,
  run as a subprocess in the torch reference venv `.venv-ref` (`bench/hf_ref.py`).
* decode: greedy tokens/s at batch 8 (prefill included, KV cache on both sides) against HF `generate`.
* convert: peak RSS of `sawt convert hf-to-orbax` (a fresh process) on a synthetic multi-GB checkpoint
  with the real hidden sizes (fewer layers), minus the largest stacked tensor; the target is <= 1 GB.

Without `.venv-ref` the HF comparisons are skipped with a note on how to make it (`make goldens`); the
conversion figure still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import emit

REPO = Path(__file__).resolve().parents[1]
REF_PYTHON = REPO / ".venv-ref" / "bin" / "python"
HF_REF = REPO / "bench" / "hf_ref.py"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def asr_batch(config, batch_size: int, audio_s: float, transcript_len: int, seed: int = 0) -> dict:
    """Equal-length ASR rows (no padding, so both sides do identical work): prompt with audio + transcript."""
    from trainer.model.geometry import encoder_token_count

    rng = np.random.default_rng(seed)
    ids = config.tokens
    frames = int(audio_s * 100)
    n_audio = int(encoder_token_count(frames, config.audio.n_window))
    vocab = config.text.vocab_size
    rows, offsets = [], []
    im_start, im_end = 1, ids.eos_token_ids[0] if ids.eos_token_ids else 2
    for _ in range(batch_size):
        words = rng.integers(16, vocab, size=8 + transcript_len)
        prompt = [im_start, *words[:2], ids.audio_start_token_id]
        offsets.append(len(prompt))
        prompt += [ids.audio_token_id] * n_audio + [
            ids.audio_end_token_id,
            *words[2:6],
            im_end,
            im_start,
            *words[6:8],
        ]
        rows.append((prompt, [*words[8:], im_end]))
    seq = np.asarray([p + t for p, t in rows], np.int32)
    b, s = seq.shape
    targets = np.zeros_like(seq)
    targets[:, :-1] = seq[:, 1:]
    loss_mask = np.zeros((b, s), np.float32)
    prompt_len = len(rows[0][0])
    loss_mask[:, prompt_len - 1 : s - 1] = 1.0
    return {
        "input_ids": seq,
        "targets": targets,
        "loss_mask": loss_mask,
        "token_mask": np.ones((b, s), bool),
        "positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy(),
        "audio_mel": (0.5 * rng.standard_normal((b, config.audio.num_mel_bins, frames))).astype(np.float32),
        "audio_frames": np.full((b,), frames, np.int32),
        "audio_tokens": np.full((b,), n_audio, np.int32),
        "audio_offset": np.asarray(offsets, np.int32),
    }


def prompt_only(batch: dict) -> dict:
    """The prompt part of `asr_batch` rows (everything before the first supervised target)."""
    first = int(np.argmax(batch["loss_mask"][0] > 0)) + 1
    out = {k: v for k, v in batch.items() if k not in ("targets", "loss_mask")}
    for k in ("input_ids", "token_mask", "positions"):
        out[k] = np.ascontiguousarray(batch[k][:, :first])
    return out


class HFPeer:
    """The HF PyTorch side as a long-lived `bench/hf_ref.py worker` in `.venv-ref`, one request per round.

    Its stderr (model-loading chatter) goes to a file whose tail is shown if the worker fails.
    """

    def __init__(self, hf_dir: Path, train_npz: Path, decode_npz: Path, budget, work: Path):
        self._log = (work / "hf_worker.log").open("w+")
        cmd = [str(REF_PYTHON), str(HF_REF), "worker", "--hf", str(hf_dir), "--train", str(train_npz),
               "--decode", str(decode_npz), "--threads", str(budget.threads)]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **budget.env()},
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self._log.seek(0)
            raise RuntimeError(f"HF reference worker failed:\n{self._log.read()[-4000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"HF reference worker: {reply['error']}")
        return reply

    def request(self, op: str, n: int) -> dict:
        self.proc.stdin.write(f"{op} {n}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
        self._log.close()


def _load_ours(ckpt: Path):
    from flax import nnx

    from trainer.model.params import load_param_tree
    from trainer.model.thinker import Thinker
    from trainer.model_checkpoint import load_model_checkpoint

    config, params = load_model_checkpoint(ckpt)
    model = Thinker(config, rngs=nnx.Rngs(0))
    load_param_tree(model, params)
    return model


def our_train_step(model, batch: dict):
    """A compiled forward+backward (loss incl. router aux) on `batch`: returns run() -> last loss.

    The same work as HF's side: one `value_and_grad` of `thinker_loss`, no optimizer update.
    """
    import jax
    from flax import nnx

    from tools.hf.config import ROUTER_AUX_LOSS_COEF
    from trainer.model.loss import thinker_loss

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # The HF side's weight (its config.json, written by hf_config_dict) and train.aux_loss_coef's default.
    aux = ROUTER_AUX_LOSS_COEF

    @jax.jit
    def step(params, batch):
        def loss_fn(p):
            out = nnx.merge(graphdef, p, rest)(batch)
            return thinker_loss(out, batch, aux)[0]

        return jax.value_and_grad(loss_fn)(params)

    device_batch = jax.tree.map(jax.numpy.asarray, batch)

    def run() -> float:
        loss, grads = step(params, device_batch)
        jax.block_until_ready(grads)
        return float(loss)

    run()  # compile
    return run


def our_generate(model, prompt: dict, new_tokens: int):
    """`greedy_generate` producing exactly `new_tokens` per row (no stop ids): returns run() -> ids."""
    import jax

    from trainer.model.generate import greedy_generate

    def run() -> np.ndarray:
        ids, _ = jax.block_until_ready(greedy_generate(model, prompt, new_tokens, stop_ids=()))
        return np.asarray(ids)

    run()  # compile
    return run


def compare(
    peer: HFPeer | None, ours, peer_op: str, n: int, repeat: int, rounds: int, work: float, clock=None
):
    """Interleaves our side (``ours()`` run ``repeat`` times per round) with the peer's ``peer_op n``.

    Returns (figures, last peer reply): each side's seconds per round summarised, its rate (``work`` per
    round / median seconds) and the ratio with its per-round range.
    """
    from bench.harness import interleave, ratio

    last: dict = {}

    def our_round() -> None:
        for _ in range(repeat):
            ours()

    def peer_round() -> float:
        nonlocal last
        last = peer.request(peer_op, n)
        return last["seconds"]

    sides = {"ours": our_round} if peer is None else {"hf": peer_round, "ours": our_round}
    kwargs = {} if clock is None else {"clock": clock}
    samples = interleave(sides, rounds, pause_s=0.25, **kwargs)
    out = {name: s.summary(work, unit="tokens_per_s") for name, s in samples.items()}
    if peer is not None:
        out["speedup_vs_hf"] = ratio(samples["hf"], samples["ours"])
    return out, last


def headline(train: dict, decode: dict, hf_train: dict, hf_decode: dict, our_ids: np.ndarray) -> dict:
    """The contract's ratio keys (and the peer's figures) from `compare`'s results; None without a peer."""
    if "hf" not in train:
        return {"train_tokens_per_s_speedup_vs_hf": None, "decode_tokens_per_s_speedup_vs_hf": None}
    hf_ids = np.asarray(hf_decode["ids"])
    return {
        "hf_train_tokens_per_s": train["hf"]["tokens_per_s"],
        "hf_train_loss": hf_train["loss"],
        "train_tokens_per_s_speedup_vs_hf": train["speedup_vs_hf"]["median"],
        "hf_decode_tokens_per_s": decode["hf"]["tokens_per_s"],
        "decode_tokens_per_s_speedup_vs_hf": decode["speedup_vs_hf"]["median"],
        "decode_first_token_agreement": float(np.mean(hf_ids[:, 0] == our_ids[:, 0])),
    }


def convert_rss(work: Path, layers: int) -> dict:
    """Peak RSS of a fresh `sawt convert hf-to-orbax` on a synthetic checkpoint with the real widths."""
    from tools.dev.synthetic_hf import write_synthetic_hf
    from tools.hf.key_map import leaf_specs
    from trainer.config import load_experiment

    real = load_experiment("qwen3-omni-30b-a3b", []).model
    text = real.text.model_copy(update={"num_hidden_layers": layers})
    audio = real.audio.model_copy(update={"encoder_layers": max(1, layers // 2)})
    config = real.model_copy(update={"text": text, "audio": audio})
    specs = leaf_specs(config)
    largest = max(int(np.prod(s.shape)) * 2 for s in specs)  # bf16
    hf = work / "hf_big"
    _log(f"convert: writing a synthetic bf16 checkpoint ({layers} text layers, real widths) to {hf}")
    t0 = time.perf_counter()
    write_synthetic_hf(hf, config, prefix="thinker.", dtype="bf16", with_visual=True)
    total = sum(f.stat().st_size for f in hf.glob("*.safetensors"))
    _log(f"convert: {total / 1e9:.2f} GB written in {time.perf_counter() - t0:.0f} s; converting")
    out = work / "ckpt_big"
    t0 = time.perf_counter()
    # A fresh process running the `sawt convert` entry point, reporting its own VmHWM (ru_maxrss would
    # carry over the forking parent's peak).
    code = (
        "import sys\n"
        "from sawt.cli import main\n"
        "rc = main(['convert', 'hf-to-orbax', '--hf', sys.argv[1], '--out', sys.argv[2], '--quiet'])\n"
        "status = open('/proc/self/status').read()\n"
        "print('VmHWM', int(status.split('VmHWM:')[1].split()[0]) * 1024)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(hf), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=REPO,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"conversion failed:\n{proc.stderr[-4000:]}")
    peak = int(proc.stdout.split("VmHWM")[-1].split()[0])
    shutil.rmtree(hf)
    shutil.rmtree(out)
    return {
        "checkpoint_gb": total / 1e9,
        "largest_stacked_tensor_gb": largest / 1e9,
        "peak_rss_gb": peak / 1e9,
        "convert_peak_rss_minus_largest_tensor_gb": (peak - largest) / 1e9,
        "convert_seconds": seconds,
        "convert_gb_per_s": total / 1e9 / seconds,
    }


def main(args: argparse.Namespace) -> int:
    from bench.harness import ThreadBudget, bench_run

    budget = ThreadBudget.for_threads(getattr(args, "threads", None))
    quick = bool(getattr(args, "quick", False))
    with (
        bench_run("model", refuse_loaded=bool(getattr(args, "refuse_loaded", False))) as results,
        tempfile.TemporaryDirectory(prefix="sawt-bench-model-") as tmp,
    ):
        budget.apply_here()  # before JAX creates its CPU client: the affinity sizes its thread pools
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        from tools.dev.synthetic_hf import write_synthetic_hf
        from tools.hf.convert import hf_to_orbax
        from trainer.config import load_experiment

        results.update(quick=quick, thread_budget=budget.describe())
        work = Path(tmp)
        config = load_experiment("small", []).model
        results["config"] = config.name
        hf = write_synthetic_hf(work / "hf", config, prefix="", dtype="fp32", scale=0.3)
        hf_to_orbax(hf, work / "ckpt", log=lambda *_: None, show_progress=False)
        model = _load_ours(work / "ckpt")
        train_batch = asr_batch(config, batch_size=2 if quick else 4, audio_s=4.0, transcript_len=24)
        decode_batch = prompt_only(asr_batch(config, batch_size=8, audio_s=3.0, transcript_len=4, seed=1))
        new_tokens = 8 if quick else 32
        steps, rounds = (2, 3) if quick else (3, 9)
        train_tokens = int(train_batch["token_mask"].sum())
        results.update(
            train_batch_rows=int(train_batch["input_ids"].shape[0]),
            train_batch_tokens=train_tokens,
            train_steps_per_round=steps,
            rounds=rounds,
            decode_batch=8,
            decode_new_tokens=new_tokens,
        )
        peer = None
        if REF_PYTHON.exists():
            np.savez(work / "train.npz", **train_batch)
            np.savez(work / "decode.npz", **decode_batch)
            _log("starting the HF PyTorch peer (.venv-ref) ...")
            peer = HFPeer(hf, work / "train.npz", work / "decode.npz", budget, work)
            results["hf_threads"] = peer.info.get("threads")
        else:
            _log(f"no HF reference venv at {REF_PYTHON}: run `make goldens` to create it; HF ratios skipped")
        try:
            _log(f"train: {rounds} interleaved rounds of {steps} steps per side ...")
            ours_train = our_train_step(model, train_batch)
            train, hf_train = compare(peer, ours_train, "train", steps, steps, rounds, train_tokens * steps)
            results["train"] = train
            results.update(train_tokens_per_s=train["ours"]["tokens_per_s"], train_loss=ours_train())
            _log(f"decode: {rounds} interleaved rounds of greedy batch-8 generation ...")
            ours_decode = our_generate(model, decode_batch, new_tokens)
            decode, hf_decode = compare(peer, ours_decode, "generate", new_tokens, 1, rounds, 8 * new_tokens)
            results["decode"] = decode
            results["decode_tokens_per_s"] = decode["ours"]["tokens_per_s"]
            results.update(headline(train, decode, hf_train, hf_decode, ours_decode()))
        finally:
            if peer is not None:
                peer.close()
    # Last, and outside the load frame: its multi-GB disk writes would disturb the timed figures above
    # and raise the load average read after them. A memory figure, not a timed ratio.
    with tempfile.TemporaryDirectory(prefix="sawt-bench-convert-") as tmp:
        results.update(convert_rss(Path(tmp), layers=1 if quick else 4))

    return emit(results, report(results), getattr(args, "json", None))


def report(results: dict) -> str:
    """The suite's figures as printed lines."""

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = [
        (
            "train tokens/s (ours / HF)",
            "train_tokens_per_s",
            "hf_train_tokens_per_s",
            "train_tokens_per_s_speedup_vs_hf",
        ),
        (
            "decode tokens/s b=8 (ours / HF)",
            "decode_tokens_per_s",
            "hf_decode_tokens_per_s",
            "decode_tokens_per_s_speedup_vs_hf",
        ),
    ]
    out = []
    for label, ours, hf, ratio in lines:
        line = f"{label}: {fmt(results.get(ours))} / {fmt(results.get(hf))} -> {fmt(results.get(ratio))}x"
        section = results.get(ours.split("_tokens")[0], {})
        if "speedup_vs_hf" in section:
            r = section["speedup_vs_hf"]
            line += f" (rounds {fmt(r['min'])}-{fmt(r['max'])}x)"
        out.append(line)
    out.append(
        f"convert: {fmt(results['checkpoint_gb'])} GB checkpoint, peak RSS {fmt(results['peak_rss_gb'])} GB, "
        f"largest stacked tensor {fmt(results['largest_stacked_tensor_gb'])} GB -> peak minus largest "
        f"{fmt(results['convert_peak_rss_minus_largest_tensor_gb'])} GB (target <= 1), "
        f"{fmt(results['convert_gb_per_s'])} GB/s"
    )
    out.append(
        f"load average {fmt(results['load_average_before'])} before, {fmt(results['load_average_after'])} "
        f"after (limit {fmt(results['load_average_limit'])}): loaded={results['loaded']}; "
        f"threads {results['thread_budget']['threads']} on cores {results['thread_budget']['cpus']}"
    )
    return "\n".join(out)
