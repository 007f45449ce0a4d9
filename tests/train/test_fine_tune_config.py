"""`load_from=` means fine-tuning that checkpoint: its architecture and tokenizer, the preset's recipe."""

from __future__ import annotations

import shutil

import pytest

from core.errors import ConfigError
from trainer.config import load_experiment
from trainer.model_checkpoint import load_model_config


def test_architecture_and_tokenizer_come_from_the_checkpoint(release_checkpoint):
    preset = load_experiment("tiny")
    cfg = load_experiment("tiny", [f"load_from={release_checkpoint}", "data.dir=/data/ar"])
    source = load_model_config(release_checkpoint)
    assert (cfg.model.audio, cfg.model.text, cfg.model.tokens) == (source.audio, source.text, source.tokens)
    assert cfg.model.text != preset.model.text  # the preset's model section really was replaced
    assert cfg.tokenizer.dir == str(release_checkpoint)
    # The recipe is the preset's: optimizer, steps, buckets, numerics.
    assert cfg.optimizer == preset.optimizer and cfg.train == preset.train
    assert cfg.data.buckets == preset.data.buckets and cfg.data.dir == "/data/ar"
    assert cfg.model.param_dtype == preset.model.param_dtype == "float32"  # the checkpoint stores bf16


def test_an_explicit_conflicting_model_field_is_named(release_checkpoint):
    with pytest.raises(
        ConfigError, match=r"model\.text\.hidden_size=64 conflicts .* model\.text\.hidden_size=16"
    ):
        load_experiment("tiny", [f"load_from={release_checkpoint}", "model.text.hidden_size=64"])
    with pytest.raises(
        ConfigError, match=r"model\.tokens\.audio_token_id=5 conflicts .*audio_token_id=151675"
    ):
        load_experiment("tiny", ["model.tokens.audio_token_id=5", f"load_from={release_checkpoint}"])


def test_agreeing_model_fields_and_numerics_may_be_set(release_checkpoint):
    cfg = load_experiment(
        "tiny",
        [f"load_from={release_checkpoint}", "model.text.hidden_size=16", "model.param_dtype=bfloat16"],
    )
    assert cfg.model.text.hidden_size == 16 and cfg.model.param_dtype == "bfloat16"


def test_an_explicit_tokenizer_dir_is_kept(release_checkpoint, tmp_path):
    shutil.copytree(release_checkpoint, tmp_path / "tok", ignore=shutil.ignore_patterns("params"))
    cfg = load_experiment("tiny", [f"load_from={release_checkpoint}", f"tokenizer.dir={tmp_path / 'tok'}"])
    assert cfg.tokenizer.dir == str(tmp_path / "tok")


def test_a_checkpoint_without_tokenizer_asks_for_one(release_checkpoint, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copytree(release_checkpoint / "params", bare / "params")
    shutil.copy(release_checkpoint / "model_config.json", bare)
    with pytest.raises(ConfigError, match=r"no tokenizer files .* set tokenizer\.dir"):
        load_experiment("tiny", [f"load_from={bare}"])
    with pytest.raises(ConfigError, match="no such checkpoint directory"):
        load_experiment("tiny", [f"load_from={tmp_path / 'nowhere'}"])
