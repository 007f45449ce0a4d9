"""The Orbax wrapper: items and layout of a step directory, commit protocols, keep-last/keep-best."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from trainer.checkpoint import Checkpointer, atomicity_mode
from trainer.config import CheckpointConfig
from trainer.model_checkpoint import read_params, resolve_checkpoint


def _state(v):
    return {"params": {"w": jnp.full((4, 2), v, jnp.float32)}, "opt_state": {"mu": jnp.zeros((4, 2))}}


def _abstract():
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0.0))


@pytest.mark.parametrize("mode", ["rename", "commit_file"])
def test_round_trip_and_half_written_steps_are_ignored(tmp_path, mode):
    ckpt = Checkpointer(str(tmp_path), CheckpointConfig(atomicity=mode, async_save=True, keep_last=5))
    ckpt.save(1, _state(1.0), {"step": 1, "data_states": [{"n": 1}]}, {"name": "m"})
    ckpt.save(2, _state(2.0), {"step": 2, "data_states": [{"n": 2}]}, {"name": "m"})
    ckpt.close()
    step_dir = tmp_path / "2"
    assert (step_dir / "commit_success.txt").is_file()
    assert json.loads((step_dir / "model_config.json").read_text()) == {"name": "m"}
    np.testing.assert_array_equal(read_params(step_dir / "params")[("w",)], np.full((4, 2), 2.0))
    assert resolve_checkpoint(tmp_path) == step_dir  # the model-checkpoint resolver accepts a trainer dir
    # A later step that never committed (crash mid-save) must not be picked up by resume.
    shutil.copytree(step_dir, tmp_path / "3")
    (tmp_path / "3" / "commit_success.txt").unlink()
    (tmp_path / "4.orbax-checkpoint-tmp-123").mkdir()
    again = Checkpointer(str(tmp_path), CheckpointConfig(atomicity=mode, keep_last=5))
    if mode == "commit_file":
        assert again.latest_step() == 2
    state, meta = again.restore(2, _abstract())
    assert meta["data_states"] == [{"n": 2}]
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.full((4, 2), 2.0))
    again.close()


def test_keep_last_and_best_by_wer(tmp_path):
    ckpt = Checkpointer(str(tmp_path), CheckpointConfig(keep_last=2, keep_best=1, async_save=False))
    for step, wer in [(1, 0.9), (2, 0.2), (3, 0.5), (4, None), (5, 0.7)]:
        ckpt.save(step, _state(float(step)), {"step": step}, {"name": "m"}, wer=wer)
    ckpt.close()
    assert sorted(ckpt.all_steps()) == [2, 4, 5]  # best WER (2) + the last two


def test_atomicity_auto():
    assert atomicity_mode("gs://bucket/run", "auto").name == "COMMIT_FILE"
    assert atomicity_mode("/tmp/run", "auto").name == "ATOMIC_RENAME"
    assert atomicity_mode("/tmp/run", "commit_file").name == "COMMIT_FILE"


def test_relative_directory_is_made_absolute(tmp_path, monkeypatch):
    # Orbax's multi-process commit rejects relative paths, which `--run-dir runs/x` produces.
    monkeypatch.chdir(tmp_path)
    ckpt = Checkpointer("runs/x/checkpoints", CheckpointConfig())
    assert ckpt.directory == str(tmp_path / "runs" / "x" / "checkpoints")
    assert (tmp_path / "runs" / "x" / "checkpoints").is_dir()
