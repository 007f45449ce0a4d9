"""Shared helpers of the model tests: loading the HF goldens into our Thinker and building batches."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from flax import nnx

from tools.dev.hf_reference.make_goldens import CLIP_SECONDS, SAMPLE_RATE, features, waveform
from tools.hf.config import read_model_config
from tools.hf.convert import read_hf_params
from trainer.model.config import ModelConfig
from trainer.model.geometry import encoder_token_count
from trainer.model.params import load_param_tree
from trainer.model.thinker import Thinker, check_audio_placeholders

GOLDENS = Path(__file__).resolve().parents[1] / "goldens" / "model"
GOLDEN_NAMES = ("tiny_a", "tiny_b")
CLIP_ORDER = tuple(CLIP_SECONDS)


def golden_config(name: str, **overrides) -> ModelConfig:
    return read_model_config(GOLDENS / name, **overrides)


@cache
def golden_tree(name: str) -> dict:
    """The golden's canonical tree (fp32), read by the converter's own path (`read_hf_params`)."""
    return read_hf_params(GOLDENS / name, dtype="fp32")[1]


@cache
def reference(name: str) -> dict:
    with np.load(GOLDENS / name / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@nnx.jit
def _jit_forward(model, batch):
    return model(batch)


def forward(model: Thinker, batch: dict):
    """Host placeholder check, then the jitted forward (eager dispatch is slow on a shared 2-core box)."""
    check_audio_placeholders(batch, model.config)
    return _jit_forward(model, batch)


def golden_model(name: str, **overrides) -> Thinker:
    model = Thinker(golden_config(name, **overrides), rngs=nnx.Rngs(0))
    load_param_tree(model, golden_tree(name))
    return model


@cache
def mel(clip: str) -> np.ndarray:
    """HF WhisperFeatureExtractor log-mel of a golden clip, computed alone: [128, n // 160]."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=160, n_fft=400, padding_value=0.0, dither=0.0
    )
    return features(fe, waveform(CLIP_SECONDS[clip]))


def mel_batch(clips: list[str], chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded [B, 128, F] (F a multiple of `chunk`) and valid frames [B]."""
    mels = [mel(c) for c in clips]
    frames = np.array([m.shape[1] for m in mels], np.int32)
    width = -(-int(frames.max()) // chunk) * chunk
    out = np.zeros((len(mels), 128, width), np.float32)
    for b, m in enumerate(mels):
        out[b, :, : m.shape[1]] = m
    return out, frames


def av_batch(name: str) -> dict:
    """The golden audio+text batch in the loader's format (interface 1)."""
    ref = reference(name)
    ids = ref["av/input_ids"]
    mask = ref["av/attention_mask"].astype(bool)
    labels = ref["av/labels"]
    clips = [CLIP_ORDER[i] for i in ref["av/clips"]]
    audio_mel, frames = mel_batch(clips)
    targets = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
    loss_mask = np.concatenate([labels[:, 1:] != -100, np.zeros_like(mask[:, :1])], axis=1)
    return {
        "input_ids": ids.astype(np.int32),
        "targets": targets.astype(np.int32),
        "loss_mask": loss_mask.astype(np.float32),
        "token_mask": mask,
        "positions": np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32) * mask,
        "audio_mel": audio_mel,
        "audio_frames": frames,
        "audio_tokens": encoder_token_count(frames).astype(np.int32),
        "audio_offset": ref["av/audio_offset"].astype(np.int32),
    }


def prompt_batch(name: str) -> dict:
    """The golden generation prompts (prompt part of the av batch), right-padded."""
    ref = reference(name)
    batch = av_batch(name)
    plen = ref["av/prompt_len"]
    width = int(plen.max())
    mask = np.arange(width)[None, :] < plen[:, None]
    out = {k: v for k, v in batch.items() if k.startswith("audio_")}
    out["input_ids"] = np.where(mask, batch["input_ids"][:, :width], 0).astype(np.int32)
    out["token_mask"] = mask
    out["positions"] = np.where(mask, np.arange(width)[None, :], 0).astype(np.int32)
    return out
