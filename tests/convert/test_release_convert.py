"""`sawt convert hf-to-orbax` on the release layout: the tiny full Qwen3-Omni that transformers wrote in
the release's shape (tests/helpers/release.py), and its thinker's logits equal transformers' own."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from flax import nnx

from tests.helpers.release import logits_at_reference, reference, reference_batch, release_dir
from tools.hf.convert import hf_to_orbax
from trainer.model.params import load_param_tree
from trainer.model.thinker import Thinker
from trainer.model_checkpoint import load_model_checkpoint

RELEASE_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "chat_template.json",
    "preprocessor_config.json",
}


def test_fixture_has_the_release_layout():
    root = release_dir()
    names = {p.name for p in root.iterdir()}
    shards = sorted(n for n in names if n.endswith(".safetensors"))
    assert names == RELEASE_FILES | set(shards) and len(shards) >= 3
    assert all(n == f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i, n in enumerate(shards))
    weight_map = json.loads((root / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(weight_map.values()) == set(shards)
    groups = Counter(k.split(".")[0] if not k.startswith("thinker.visual.") else "visual" for k in weight_map)
    assert set(groups) == {"thinker", "visual", "talker", "code2wav"}
    config = json.loads((root / "config.json").read_text())
    assert config["architectures"] == ["Qwen3OmniMoeForConditionalGeneration"]
    assert {"thinker_config", "talker_config", "code2wav_config"} <= set(config)
    assert {"audio_config", "vision_config", "text_config"} <= set(config["thinker_config"])
    assert {"text_config", "code_predictor_config"} <= set(config["talker_config"])
    assert config["thinker_config"]["audio_token_id"] == 151675
    assert config["thinker_config"]["text_config"]["vocab_size"] == 152064


def test_converted_release_gives_transformers_logits(tmp_path):
    summary = hf_to_orbax(
        release_dir(), tmp_path / "ck", dtype="fp32", log=lambda *_: None, show_progress=False
    )
    assert summary["prefix"] == "thinker." and set(summary["skipped"]) == {"visual", "talker", "code2wav"}
    config, params = load_model_checkpoint(tmp_path / "ck")
    # Ids the model needs come from the files: config.json, and generation_config.json for eos and pad.
    assert config.tokens.audio_token_id == 151675 and config.tokens.eos_token_ids == (151645, 151643)
    assert config.tokens.pad_token_id == 151643
    model = Thinker(config, rngs=nnx.Rngs(0))
    load_param_tree(model, params)
    got = logits_at_reference(np.asarray(nnx.jit(lambda m, b: m(b))(model, reference_batch()).logits))
    ref = reference()
    assert ref["logits"].std() > 0.5  # the comparison means something
    assert float(np.max(np.abs(got["logits"] - ref["logits"]))) <= 1e-4
    assert float(np.max(np.abs(got["logsumexp"] - ref["logsumexp"]))) <= 1e-4
    assert (got["argmax"] == ref["argmax"]).all()
