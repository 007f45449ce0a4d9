"""`sawt serve`'s settings: one typed model (inference_server/config.py), its flags generated from it, loadable
from YAML and key=value overrides; the older flag spellings still work."""

from __future__ import annotations

import pytest

from core import configlib
from core.errors import ConfigError
from core.flags import flag_name
from inference_server.config import ServerConfig, load_server_config
from sawt.cli import build_parser, main, parse_args
from sawt.commands.serve import server_config


def _config(*argv: str) -> ServerConfig:
    return server_config(parse_args(build_parser(), ["serve", *argv]))


def test_every_setting_is_described_and_has_its_flag():
    assert configlib.undocumented_fields(ServerConfig) == []
    options = {
        o
        for a in build_parser()._subparsers._group_actions[0].choices["serve"]._actions
        for o in a.option_strings
    }
    assert {flag_name(name) for name in ServerConfig.model_fields} <= options


def test_flags_reach_the_typed_config():
    config = _config(
        "--checkpoint", "CK", "--max-batch", "3", "--cut", "fixed", "--access-log", "--port", "9001",
        "--api-key-env", "KEY_VAR", "--log-level", "warning",
    )  # fmt: skip
    assert (config.checkpoint, config.max_batch, config.cut, config.access_log) == ("CK", 3, "fixed", True)
    assert (config.port, config.api_key_env, config.log_level) == (9001, "KEY_VAR", "warning")
    assert _config("--checkpoint", "CK") == ServerConfig(checkpoint="CK")  # nothing given: the defaults


def test_older_spellings_are_aliases():
    config = _config(
        "--checkpoint", "CK", "--request-timeout", "12", "--drain-grace", "7", "--max-body-mb", "2"
    )  # fmt: skip
    assert (config.request_timeout_s, config.drain_grace_s, config.max_body_bytes) == (12.0, 7.0, 2 << 20)


def test_yaml_then_overrides_then_flags(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("checkpoint: /models/ft\nmax_batch: 16\nmax_queue: 5\nwindow_s: 20\naccess_log: true\n")
    config = _config("--config", str(path), "max_queue=9", "--max-batch", "4", "cut=fixed")
    assert (config.checkpoint, config.window_s, config.access_log) == ("/models/ft", 20.0, True)  # YAML
    assert (config.max_queue, config.cut) == (9, "fixed")  # overrides, on both sides of a flag
    assert config.max_batch == 4  # the flag wins
    assert load_server_config(path) == ServerConfig(
        checkpoint="/models/ft", max_batch=16, max_queue=5, window_s=20, access_log=True
    )


def test_bad_settings_are_errors_naming_the_key(tmp_path, capsys):
    with pytest.raises(ConfigError, match="max_batch"):
        _config("--checkpoint", "CK", "--max-batch", "0")
    with pytest.raises(ConfigError, match="no_such_key: unknown key"):
        _config("--checkpoint", "CK", "no_such_key=1")
    with pytest.raises(ConfigError, match=r"overlap_s .* must be shorter than window_s"):
        _config("--checkpoint", "CK", "--window-s", "4", "--overlap-s", "4")
    with pytest.raises(ConfigError, match="does not exist"):
        _config("--config", str(tmp_path / "absent.yaml"))
    assert main(["serve", "--max-batch", "2"]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", "CK", "max_queue=-1"]) == 2
    assert "max_queue" in capsys.readouterr().err
