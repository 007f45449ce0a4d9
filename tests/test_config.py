"""Config loading: presets, overrides, and errors that name the key."""

import pytest

from core import configlib
from trainer.config import ExperimentConfig, load_experiment, preset_names


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    config = load_experiment(name)
    assert isinstance(config, ExperimentConfig)
    # A dumped config loads back to the same object.
    assert configlib.build(ExperimentConfig, __import__("yaml").safe_load(configlib.dump(config))) == config


def test_every_field_has_a_description():
    assert configlib.undocumented_fields(ExperimentConfig) == []


def test_override_sets_nested_value():
    config = load_experiment("tiny", ["seed=7", "data.dir=/tmp/x"])
    assert config.seed == 7
    assert config.data.dir == "/tmp/x"


def test_unknown_key_is_named():
    with pytest.raises(configlib.ConfigError, match=r"data\.no_such_key: unknown key"):
        load_experiment("tiny", ["data.no_such_key=1"])


def test_wrong_type_is_named():
    with pytest.raises(configlib.ConfigError, match=r"seed: .*integer"):
        load_experiment("tiny", ["seed=abc"])


def test_unknown_preset_lists_known_ones():
    with pytest.raises(configlib.ConfigError, match="tiny"):
        load_experiment("no-such-preset")


def test_base_chain_merges(tmp_path):
    (tmp_path / "child.yaml").write_text("base: tiny\nseed: 3\n")
    config = load_experiment(tmp_path / "child.yaml")
    assert config.seed == 3
    assert config.model == load_experiment("tiny").model


def test_bad_override_syntax():
    with pytest.raises(configlib.ConfigError, match="key=value"):
        configlib.parse_override("justakey")


@pytest.mark.parametrize(
    "override",
    [
        "model.text.router_aux_loss_coef=0.5",
        "model.text.max_position_embeddings=8",
        "model.audio.max_source_positions=8",
    ],
)
def test_retired_model_knobs_are_unknown_keys(override):
    """Knobs no code read are gone (trainer/model/config.py RETIRED_KEYS): setting one is an error, not a no-op."""
    with pytest.raises(configlib.ConfigError, match=rf"{override.split('=')[0]}: unknown key"):
        load_experiment("tiny", [override])


def test_older_model_config_json_with_retired_knobs_still_loads(tmp_path):
    """A checkpoint written before the knobs were retired (its model_config.json names them) still loads."""
    import json

    from trainer.model.config import RETIRED_KEYS, ModelConfig
    from trainer.model_checkpoint import MODEL_CONFIG_FILE, PARAMS_DIR, load_model_config

    old = ModelConfig().model_dump(mode="json")
    for section, key in RETIRED_KEYS:
        old[section][key] = 1500
    (tmp_path / PARAMS_DIR).mkdir()
    (tmp_path / MODEL_CONFIG_FILE).write_text(json.dumps(old))
    assert load_model_config(tmp_path) == ModelConfig()
    old["text"]["no_such_knob"] = 1  # anything else unknown still fails, naming the file
    (tmp_path / MODEL_CONFIG_FILE).write_text(json.dumps(old))
    with pytest.raises(ValueError, match="not a valid model config"):
        load_model_config(tmp_path)
