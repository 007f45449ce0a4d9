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
