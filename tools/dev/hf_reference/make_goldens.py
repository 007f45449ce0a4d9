"""Builds tiny random HF Qwen3-Omni thinkers and their reference outputs: the model parity goldens.

Runs in `.venv-ref` (Python 3.11 + torch CPU + transformers 5.24; see `make goldens`), never in the main
venv, and imports nothing from sawt (no JAX there). For each tiny config it writes
`tests/goldens/model/<name>/`:

* `config.json` + `model.safetensors`: `save_pretrained` of the thinker. Weights are redrawn at O(1)
  scale (HF's 0.02 init leaves a tiny model blind to its inputs, so parity would pass with bugs) and
  rounded to bf16-representable values; the safetensors file is then rewritten with bf16 tensors, which is
  exact and halves the size (the goldens must stay small).
* `reference.npz`: inputs and HF outputs (fp32, eager attention): encoder outputs for 1.3 s, 2 s and 9.37 s
  clips run as one batch, audio+text logits of a padded batch with labels (loss, CE, aux loss), text-only
  logits of a padded batch, and 16 greedy tokens per row.
* `meta.json`: versions and a description of each array.

Waveforms come from a closed formula (`waveform`), so the tests recompute the same log-mel with HF's
WhisperFeatureExtractor in the main venv instead of storing it.

Usage: .venv-ref/bin/python tools/dev/hf_reference/make_goldens.py [--out tests/goldens/model] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    # Run as a script in .venv-ref (torch, no sawt install): the repository root gives trainer.data.audio_io,
    # which needs only numpy. load_export.py and release_fixture.py import this module the same way.
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from trainer.data.audio_io import SAMPLE_RATE

CLIP_SECONDS = {"clip_1p3": 1.3, "clip_2": 2.0, "clip_9p37": 9.37}
DEMO_IDS = dict(
    endoftext=0,
    im_start=1,
    im_end=2,
    audio_start=3,
    audio_end=4,
    audio_pad=5,
    vision_start=6,
    vision_end=7,
    image_pad=8,
    video_pad=9,
)

CONFIGS = {
    # The `tiny` preset's shape (dossier §10), with a smaller vocabulary to keep the golden small.
    "tiny_a": dict(
        vocab=512,
        hidden=64,
        layers=3,
        heads=4,
        kv_heads=2,
        head_dim=32,
        experts=8,
        top_k=2,
        expert_width=32,
        mrope=[6, 5, 5],
        audio_d=64,
        audio_layers=2,
        audio_heads=4,
        audio_ffn=128,
        conv=16,
        n_window_infer=800,
    ),
    # Differs in experts, top-k, KV heads (plain MHA), audio layers and the attention window (4 s).
    "tiny_b": dict(
        vocab=256,
        hidden=48,
        layers=2,
        heads=4,
        kv_heads=4,
        head_dim=16,
        experts=6,
        top_k=3,
        expert_width=24,
        mrope=[4, 2, 2],
        audio_d=32,
        audio_layers=1,
        audio_heads=2,
        audio_ffn=64,
        conv=8,
        n_window_infer=400,
    ),
}


def waveform(seconds: float) -> np.ndarray:
    """Deterministic test audio: a chirp, a few harmonics and hash noise (float64 maths, float32 out)."""
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    chirp = 0.4 * np.sin(2 * np.pi * (150.0 * t + 400.0 * t * t / max(seconds, 1e-3)))
    tones = 0.15 * np.sin(2 * np.pi * 1200.0 * t) * (1 + np.sin(2 * np.pi * 3.0 * t))
    noise = np.modf(np.abs(np.sin(np.arange(n, dtype=np.float64) * 12.9898) * 43758.5453))[0] - 0.5
    return (chirp + tones + 0.1 * noise).astype(np.float32)


def hf_config(name: str, c: dict):
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeThinkerConfig

    text = dict(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        intermediate_size=c["expert_width"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"],
        head_dim=c["head_dim"],
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1e6,
            "mrope_section": c["mrope"],
            "interleaved": True,
        },
        decoder_sparse_step=1,
        moe_intermediate_size=c["expert_width"],
        num_experts_per_tok=c["top_k"],
        num_experts=c["experts"],
        norm_topk_prob=True,
        router_aux_loss_coef=0.001,
        mlp_only_layers=[],
        pad_token_id=DEMO_IDS["endoftext"],
        eos_token_id=DEMO_IDS["im_end"],
    )
    audio = dict(
        num_mel_bins=128,
        encoder_layers=c["audio_layers"],
        encoder_attention_heads=c["audio_heads"],
        encoder_ffn_dim=c["audio_ffn"],
        d_model=c["audio_d"],
        output_dim=c["hidden"],
        n_window=50,
        n_window_infer=c["n_window_infer"],
        downsample_hidden_size=c["conv"],
        max_source_positions=1500,
        conv_chunksize=500,
        activation_function="gelu",
    )
    vision = dict(
        depth=1,
        hidden_size=16,
        intermediate_size=16,
        num_heads=2,
        out_hidden_size=c["hidden"],
        deepstack_visual_indexes=[0],
        num_position_embeddings=16,
    )
    cfg = Qwen3OmniMoeThinkerConfig(
        audio_config=audio,
        vision_config=vision,
        text_config=text,
        audio_token_id=DEMO_IDS["audio_pad"],
        audio_start_token_id=DEMO_IDS["audio_start"],
        image_token_id=DEMO_IDS["image_pad"],
        video_token_id=DEMO_IDS["video_pad"],
        position_id_per_seconds=13,
    )
    # Not declared by the thinker config class but read by HF (dossier §5, §10): set them as the real json does.
    cfg.audio_end_token_id = DEMO_IDS["audio_end"]
    cfg.vision_start_token_id = DEMO_IDS["vision_start"]
    cfg.vision_end_token_id = DEMO_IDS["vision_end"]
    cfg.pad_token_id = DEMO_IDS["endoftext"]
    cfg.eos_token_id = DEMO_IDS["im_end"]
    cfg._name_or_path = name
    return cfg


def redraw_weights(model, seed: int) -> None:
    """O(1)-scale weights, rounded to bf16-representable fp32 values."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith("norm.weight") or name.endswith("ln_post.weight") or "layer_norm.weight" in name:
                value = 1.0 + 0.2 * torch.randn(shape, generator=gen)
            elif name.endswith(".bias") or p.ndim == 1:
                value = 0.2 * torch.randn(shape, generator=gen)
            elif "embed_tokens" in name:
                value = torch.randn(shape, generator=gen)
            elif "experts.gate_up_proj" in name or "experts.down_proj" in name:
                fan_in = shape[-1]
                value = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
            elif "mlp.gate.weight" in name:  # router: spread logits so top-k choices vary
                value = 2.0 * torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
            else:
                fan_in = int(np.prod(shape[1:]))
                value = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
            p.copy_(value.to(torch.bfloat16).to(torch.float32))


def features(fe, wave: np.ndarray) -> np.ndarray:
    """HF log-mel of one clip, alone (no batch padding effects): [128, n_samples // 160].

    WhisperFeatureExtractor takes a torch STFT path when torch is importable and a numpy path otherwise;
    the main venv has no torch, so force the numpy path here to give both sides bit-identical inputs.
    """
    import transformers.models.whisper.feature_extraction_whisper as whisper_fe

    whisper_fe.is_torch_available = lambda: False
    out = fe(
        wave,
        sampling_rate=SAMPLE_RATE,
        return_tensors="np",
        padding=True,
        truncation=False,
        return_attention_mask=True,
    )
    n = int(out["attention_mask"].sum())
    return out["input_features"][0, :, :n].astype(np.float32)


def token_count(frames: int, n_window: int = 50) -> int:
    chunk = 2 * n_window
    return 13 * (frames // chunk) + ((frames % chunk) + 7) // 8


def build_rows(rng, vocab: int, clips: list[tuple[int, int]]):
    """Prompt + target ids per row in the ASR ChatML layout with random word ids (>= 10)."""
    rows = []
    for n_tokens, n_target in clips:

        def words(k):
            return list(rng.integers(10, vocab, size=k))

        prompt = [DEMO_IDS["im_start"], *words(2), DEMO_IDS["audio_start"]]
        offset = len(prompt)
        prompt += [DEMO_IDS["audio_pad"]] * n_tokens + [
            DEMO_IDS["audio_end"],
            *words(4),
            DEMO_IDS["im_end"],
            *words(1),
            DEMO_IDS["im_start"],
            *words(2),
        ]
        target = [*words(n_target), DEMO_IDS["im_end"]]
        rows.append(dict(prompt=prompt, target=target, offset=offset, n_tokens=n_tokens))
    return rows


def make_one(name: str, c: dict, out_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeThinkerForConditionalGeneration,
    )

    torch.manual_seed(0)
    cfg = hf_config(name, c)
    cfg._attn_implementation = "eager"
    model = Qwen3OmniMoeThinkerForConditionalGeneration(cfg).eval()
    redraw_weights(model, seed=1234)
    fe = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLE_RATE,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        dither=0.0,
    )
    ref: dict[str, np.ndarray] = {}
    mels = {k: features(fe, waveform(s)) for k, s in CLIP_SECONDS.items()}
    for k, m in mels.items():
        ref[f"{k}/frames"] = np.int32(m.shape[1])
        ref[f"{k}/mel_head"] = m[:, :16]  # a fingerprint: tests recompute the mel and check it

    with torch.no_grad():
        # 1) Encoder: the three clips in one call (windows and clip isolation are exercised).
        order = list(CLIP_SECONDS)
        cat = torch.from_numpy(np.concatenate([mels[k] for k in order], axis=1))
        lens = torch.tensor([mels[k].shape[1] for k in order])
        enc = model.model.audio_tower(input_features=cat, feature_lens=lens).last_hidden_state.numpy()
        start = 0
        for k in order:
            n = token_count(mels[k].shape[1])
            ref[f"{k}/encoder"] = enc[start : start + n]
            start += n
        assert start == enc.shape[0]

        # 2) Audio + text, padded batch of two rows (2 s and 1.3 s clips), labels on the target only.
        rng = np.random.default_rng(7)
        clips = ["clip_2", "clip_1p3"]
        rows = build_rows(
            rng, c["vocab"], [(token_count(mels[k].shape[1]), 6 + 3 * i) for i, k in enumerate(clips)]
        )
        seqs = [r["prompt"] + r["target"] for r in rows]
        width = max(len(s) for s in seqs) + 3
        ids = np.zeros((2, width), np.int64)
        mask = np.zeros((2, width), np.int64)
        labels = np.full((2, width), -100, np.int64)
        for b, (r, s) in enumerate(zip(rows, seqs, strict=True)):
            ids[b, : len(s)] = s
            mask[b, : len(s)] = 1
            labels[b, len(r["prompt"]) : len(s)] = r["target"]
        fmax = max(mels[k].shape[1] for k in clips)
        feats = np.zeros((2, 128, fmax), np.float32)
        fmask = np.zeros((2, fmax), np.int64)
        for b, k in enumerate(clips):
            feats[b, :, : mels[k].shape[1]] = mels[k]
            fmask[b, : mels[k].shape[1]] = 1
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            input_features=torch.from_numpy(feats),
            feature_attention_mask=torch.from_numpy(fmask),
            labels=torch.from_numpy(labels),
            output_router_logits=True,
        )
        ce = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            input_features=torch.from_numpy(feats),
            feature_attention_mask=torch.from_numpy(fmask),
            labels=torch.from_numpy(labels),
            output_router_logits=False,
        ).loss
        ref["av/input_ids"] = ids.astype(np.int32)
        ref["av/attention_mask"] = mask.astype(np.int32)
        ref["av/labels"] = labels.astype(np.int32)
        ref["av/clips"] = np.array([order.index(k) for k in clips], np.int32)
        ref["av/audio_offset"] = np.array([r["offset"] for r in rows], np.int32)
        ref["av/prompt_len"] = np.array([len(r["prompt"]) for r in rows], np.int32)
        ref["av/logits"] = out.logits.numpy().astype(np.float32)
        ref["av/loss"] = np.float32(out.loss.item())
        ref["av/aux_loss"] = np.float32(out.aux_loss.item())
        ref["av/ce"] = np.float32(ce.item())

        # 3) Text only, padded batch.
        t_ids = np.zeros((2, 14), np.int64)
        t_mask = np.zeros((2, 14), np.int64)
        for b, n in enumerate((14, 9)):
            t_ids[b, :n] = rng.integers(10, c["vocab"], size=n)
            t_mask[b, :n] = 1
        t_out = model(input_ids=torch.from_numpy(t_ids), attention_mask=torch.from_numpy(t_mask))
        ref["text/input_ids"] = t_ids.astype(np.int32)
        ref["text/attention_mask"] = t_mask.astype(np.int32)
        ref["text/logits"] = t_out.logits.numpy().astype(np.float32)

        # 4) Greedy generation of 16 tokens from each audio prompt alone (HF pads on the left in batches).
        gens = []
        for b, k in enumerate(clips):
            p = torch.tensor([rows[b]["prompt"]])
            g = model.generate(
                input_ids=p,
                attention_mask=torch.ones_like(p),
                input_features=torch.from_numpy(mels[k][None]),
                feature_attention_mask=torch.ones((1, mels[k].shape[1]), dtype=torch.long),
                max_new_tokens=16,
                min_new_tokens=16,
                do_sample=False,
                eos_token_id=DEMO_IDS["im_end"],
                pad_token_id=DEMO_IDS["endoftext"],
            )
            gens.append(g[0, p.shape[1] :].numpy())
        ref["gen/tokens"] = np.stack(gens).astype(np.int32)

    target = out_dir / name
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tensors = load_file(str(Path(tmp) / "model.safetensors"))
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.copy(Path(tmp) / "config.json", target / "config.json")
    bf16 = {}
    for key, t in tensors.items():
        assert torch.equal(t.to(torch.bfloat16).to(t.dtype), t), f"{key} is not bf16-exact"
        bf16[key] = t.to(torch.bfloat16).contiguous()
    save_file(bf16, str(target / "model.safetensors"), metadata={"format": "pt"})
    np.savez_compressed(target / "reference.npz", **ref)
    import transformers

    meta = {
        "name": name,
        "shape": c,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "weights": "save_pretrained, O(1) redraw rounded to bf16, stored as bf16 (exact)",
        "clips_seconds": CLIP_SECONDS,
        "arrays": {k: list(np.shape(v)) for k, v in ref.items()},
        "hf_keys_sample": sorted(tensors)[:5],
        "n_tensors": len(tensors),
    }
    (target / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = sum(p.stat().st_size for p in target.iterdir())
    print(f"{name}: {len(tensors)} tensors, {size / 1e6:.2f} MB in {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("tests/goldens/model"), help="goldens directory")
    parser.add_argument("--only", choices=sorted(CONFIGS), help="build one config only")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: torch is missing; run this with .venv-ref/bin/python (make goldens)", file=sys.stderr)
        return 2
    for name, c in CONFIGS.items():
        if args.only and name != args.only:
            continue
        make_one(name, c, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
