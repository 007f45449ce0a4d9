"""Numerical parity with Hugging Face transformers' Qwen3-Omni thinker (fp32), against committed goldens.

The goldens (tests/goldens/model/<name>/) are tiny random HF thinkers saved with `save_pretrained` plus
HF's outputs, built by `make goldens` (tools/dev/hf_reference/make_goldens.py, run in `.venv-ref` with torch).
Two configs differ in experts, top-k, KV heads, audio layers and the attention window. Tolerance: 1e-4
max abs difference on logits of std ~1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from tests.model.helpers import (
    CLIP_ORDER,
    GOLDEN_NAMES,
    GOLDENS,
    av_batch,
    forward,
    golden_model,
    mel,
    mel_batch,
    prompt_batch,
    reference,
)
from trainer.model.generate import greedy_generate
from trainer.model.loss import thinker_loss

TOL = 1e-4


def assert_close(ours, theirs, tol=TOL, what=""):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = float(np.max(np.abs(ours - theirs)))
    assert diff <= tol, f"{what}: max abs diff {diff:.3g} > {tol} (reference std {theirs.std():.3g})"


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_log_mel_inputs_match_golden(name):
    """The tests' HF WhisperFeatureExtractor features match the ones the goldens were made from."""
    ref = reference(name)
    for clip in CLIP_ORDER:
        m = mel(clip)
        assert m.shape[1] == int(ref[f"{clip}/frames"])
        assert_close(m[:, :16], ref[f"{clip}/mel_head"], 1e-5, f"{clip} log-mel")


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_audio_encoder_matches_hf(name):
    """1.3 s, 2 s and 9.37 s clips in one padded batch (several attention windows for the long clip)."""
    model = golden_model(name)
    ref = reference(name)
    audio_mel, frames = mel_batch(list(CLIP_ORDER))
    feats, valid = nnx.jit(lambda m, x, n: m.audio_tower(x, n))(model, audio_mel, frames)
    for b, clip in enumerate(CLIP_ORDER):
        want = ref[f"{clip}/encoder"]
        assert int(valid[b].sum()) == want.shape[0]
        assert_close(feats[b, : want.shape[0]], want, what=f"{name} encoder {clip}")


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_audio_text_logits_and_loss_match_hf(name):
    """Padded batch of two audio prompts with targets: logits at valid positions, CE, aux and total loss."""
    model = golden_model(name)
    ref = reference(name)
    batch = av_batch(name)
    out = forward(model, batch)
    mask = batch["token_mask"]
    assert_close(np.asarray(out.logits)[mask], ref["av/logits"][mask], what=f"{name} audio+text logits")
    # The weight HF's reference loss used: its config's router_aux_loss_coef (ours is train.aux_loss_coef).
    hf_text = json.loads((GOLDENS / name / "config.json").read_text())["text_config"]
    loss, metrics = thinker_loss(out, batch, aux_coef=hf_text["router_aux_loss_coef"])
    assert_close(metrics["ce"], ref["av/ce"], 1e-5, "CE")
    assert_close(metrics["aux"], ref["av/aux_loss"], 1e-5, "aux")
    assert_close(loss, ref["av/loss"], 1e-5, "loss")
    assert float(metrics["tokens"]) == float((ref["av/labels"] != -100).sum())
    np.testing.assert_allclose(float(np.sum(metrics["expert_load"])), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_text_only_logits_match_hf(name):
    model = golden_model(name)
    ref = reference(name)
    mask = ref["text/attention_mask"].astype(bool)
    batch = {
        "input_ids": ref["text/input_ids"],
        "token_mask": mask,
        "positions": (np.maximum(np.cumsum(mask, 1) - 1, 0) * mask).astype(np.int32),
    }
    out = forward(model, batch)
    assert_close(np.asarray(out.logits)[mask], ref["text/logits"][mask], what=f"{name} text logits")


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_greedy_generation_matches_hf(name):
    """16 greedy tokens per row; rows of different prompt lengths decode together in one batch."""
    model = golden_model(name)
    ids, counts = greedy_generate(model, prompt_batch(name), 16, stop_ids=())
    np.testing.assert_array_equal(np.asarray(ids), reference(name)["gen/tokens"])
    np.testing.assert_array_equal(np.asarray(counts), [16, 16])


@pytest.mark.parametrize("impl", ["dense", "ragged", "blocked"])
def test_every_moe_path_matches_hf(impl):
    model = golden_model("tiny_a", moe_impl=impl)
    batch = av_batch("tiny_a")
    out = forward(model, batch)
    mask = batch["token_mask"]
    assert_close(np.asarray(out.logits)[mask], reference("tiny_a")["av/logits"][mask], what=f"{impl} logits")


def test_data_pipeline_log_mel_feeds_the_encoder_like_hf():
    """`log_mel` (the loader's features) vs HF WhisperFeatureExtractor, then through our encoder."""
    from tools.dev.hf_reference.make_goldens import CLIP_SECONDS, waveform
    from trainer.data.audio import log_mel

    model = golden_model("tiny_a")
    ref = reference("tiny_a")
    mels = {clip: log_mel(waveform(CLIP_SECONDS[clip])) for clip in CLIP_ORDER}
    for clip, m in mels.items():
        assert_close(m, mel(clip), 1e-4, f"{clip} log_mel vs WhisperFeatureExtractor")
    width = max(m.shape[1] for m in mels.values())
    width = -(-width // 100) * 100
    batch = np.stack([np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in mels.values()])
    frames = np.array([m.shape[1] for m in mels.values()], np.int32)
    feats, _ = nnx.jit(lambda m, x, n: m.audio_tower(x, n))(model, batch, frames)
    for b, clip in enumerate(CLIP_ORDER):
        want = ref[f"{clip}/encoder"]
        assert_close(feats[b, : want.shape[0]], want, 1e-4, f"encoder on log_mel features, {clip}")
