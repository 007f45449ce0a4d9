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


def _run_ref(mode: str, hf_dir: Path, batch_path: Path, out: Path, *extra: str) -> dict:
    cmd = [
        str(REF_PYTHON),
        str(HF_REF),
        mode,
        "--hf",
        str(hf_dir),
        "--batch",
        str(batch_path),
        "--out",
        str(out),
    ]
    proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"HF reference ({mode}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _load_ours(ckpt: Path):
    from flax import nnx

    from trainer.model.params import load_param_tree
    from trainer.model.thinker import Thinker
    from trainer.model_checkpoint import load_model_checkpoint

    config, params = load_model_checkpoint(ckpt)
    model = Thinker(config, rngs=nnx.Rngs(0))
    load_param_tree(model, params)
    return model


def our_train_tokens_per_s(model, batch: dict, steps: int) -> tuple[float, float]:
    """(tokens/s, last loss) of a jitted forward+backward (loss incl. router aux) over `steps` repeats."""
    import jax
    from flax import nnx

    from trainer.model.loss import thinker_loss

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    aux = model.config.text.router_aux_loss_coef

    @jax.jit
    def step(params, batch):
        def loss_fn(p):
            out = nnx.merge(graphdef, p, rest)(batch)
            return thinker_loss(out, batch, aux)[0]

        return jax.value_and_grad(loss_fn)(params)

    jax.block_until_ready(step(params, batch))  # compile
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, grads = step(params, batch)
    jax.block_until_ready(grads)
    seconds = time.perf_counter() - t0
    return int(batch["token_mask"].sum()) * steps / seconds, float(loss)


def our_decode_tokens_per_s(model, prompt: dict, new_tokens: int, repeats: int) -> tuple[float, np.ndarray]:
    """(tokens/s, ids) of `greedy_generate` producing exactly `new_tokens` per row (no stop ids)."""
    import jax

    from trainer.model.generate import greedy_generate

    jax.block_until_ready(greedy_generate(model, prompt, new_tokens, stop_ids=()))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids, _ = jax.block_until_ready(greedy_generate(model, prompt, new_tokens, stop_ids=()))
        times.append(time.perf_counter() - t0)
    return ids.size / min(times), np.asarray(ids)


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
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from tools.dev.synthetic_hf import write_synthetic_hf
    from tools.hf.convert import hf_to_orbax
    from trainer.config import load_experiment

    quick = bool(getattr(args, "quick", False))
    results: dict = {"machine": f"{os.cpu_count()}-core CPU", "quick": quick}
    with tempfile.TemporaryDirectory(prefix="sawt-bench-model-") as tmp:
        work = Path(tmp)
        results.update(convert_rss(work, layers=1 if quick else 4))

        config = load_experiment("small", []).model
        results["config"] = config.name
        hf = write_synthetic_hf(work / "hf", config, prefix="", dtype="fp32", scale=0.3)
        hf_to_orbax(hf, work / "ckpt", log=lambda *_: None, show_progress=False)
        model = _load_ours(work / "ckpt")
        train_batch = asr_batch(config, batch_size=2 if quick else 4, audio_s=4.0, transcript_len=24)
        steps = 2 if quick else 5
        ours_train, ours_loss = our_train_tokens_per_s(model, train_batch, steps)
        results.update(train_tokens_per_s=ours_train, train_loss=ours_loss)
        decode_batch = prompt_only(asr_batch(config, batch_size=8, audio_s=3.0, transcript_len=4, seed=1))
        new_tokens = 8 if quick else 32
        ours_decode, our_ids = our_decode_tokens_per_s(model, decode_batch, new_tokens, repeats=2)
        results.update(decode_tokens_per_s=ours_decode, decode_batch=8, decode_new_tokens=new_tokens)

        if REF_PYTHON.exists():
            np.savez(work / "train.npz", **train_batch)
            np.savez(work / "decode.npz", **decode_batch)
            hf_train = _run_ref("train", hf, work / "train.npz", work / "t.json", "--steps", str(steps))
            hf_decode = _run_ref(
                "generate", hf, work / "decode.npz", work / "g.json", "--new-tokens", str(new_tokens)
            )
            hf_ids = np.asarray(hf_decode["ids"])
            results.update(
                hf_train_tokens_per_s=hf_train["tokens_per_s"],
                hf_train_loss=hf_train["loss"],
                train_tokens_per_s_speedup_vs_hf=ours_train / hf_train["tokens_per_s"],
                hf_decode_tokens_per_s=hf_decode["tokens_per_s"],
                decode_tokens_per_s_speedup_vs_hf=ours_decode / hf_decode["tokens_per_s"],
                decode_first_token_agreement=float(np.mean(hf_ids[:, 0] == our_ids[:, 0])),
            )
        else:
            _log(f"no HF reference venv at {REF_PYTHON}: run `make goldens` to create it; HF ratios skipped")
            results.update(train_tokens_per_s_speedup_vs_hf=None, decode_tokens_per_s_speedup_vs_hf=None)

    _print(results)
    if getattr(args, "json", None):
        from core.fileio import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


def _print(results: dict) -> None:
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
    for label, ours, hf, ratio in lines:
        print(f"{label}: {fmt(results.get(ours))} / {fmt(results.get(hf))} -> {fmt(results.get(ratio))}x")
    print(
        f"convert: {fmt(results['checkpoint_gb'])} GB checkpoint, peak RSS {fmt(results['peak_rss_gb'])} GB, "
        f"largest stacked tensor {fmt(results['largest_stacked_tensor_gb'])} GB -> peak minus largest "
        f"{fmt(results['convert_peak_rss_minus_largest_tensor_gb'])} GB (target <= 1), "
        f"{fmt(results['convert_gb_per_s'])} GB/s"
    )
