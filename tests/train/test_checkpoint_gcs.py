"""Checkpoints at ``checkpoint.dir=gs://...``, for real, against the GCS emulator (tests/helpers/gcs.py).

The default GKE layout writes checkpoints straight to ``gs://`` (Orbax commits them with a
``commit_success.txt`` marker there). GCS itself cannot be reached from here; `gcp-storage-emulator` stands
in for it, and the real clients (tensorstore for arrays, gcsfs under etils epath for everything else) talk
to it. Emulator gaps (no Storage Control API, hence no hierarchical-namespace detection; no IAM) are listed
in tests/helpers/gcs.py and docs/deploy.md; nothing below depends on them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from helpers.gcs import gcs_emulator, gcs_files, gcs_fs, pointed_at
from test_checkpoint_resume import _env, finish, last_step, sawt_train, summary, wait_for

from trainer.checkpoint import Checkpointer
from trainer.config import CheckpointConfig
from trainer.model_checkpoint import (
    RUN_MODEL_DIR,
    companion_dir,
    load_model_checkpoint,
    read_params,
    resolve_checkpoint,
)


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator("sawt-ckpt") as emulator, pointed_at(emulator):
        yield emulator


def _state(v):
    return {"params": {"w": jnp.full((4, 2), v, jnp.float32)}, "opt_state": {"mu": jnp.zeros((4, 2))}}


def _abstract():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), _state(0.0))


def _steps(gcs, prefix):
    """(committed, uncommitted) step numbers under gs://bucket/prefix, from the objects themselves."""
    files = gcs_files(gcs, prefix)
    root = f"{gcs.bucket}/{prefix.strip('/')}/"
    steps = {f[len(root) :].split("/")[0] for f in files if f.startswith(root)}
    steps = {int(s) for s in steps if s.isdigit()}
    committed = {s for s in steps if f"{root}{s}/commit_success.txt" in files}
    return sorted(committed), sorted(steps - committed)


def test_async_save_restore_keep_last_and_best_across_restarts(gcs):
    directory = gcs.uri("unit", "checkpoints")
    cfg = CheckpointConfig(keep_last=2, keep_best=1, async_save=True)
    ckpt = Checkpointer(directory, cfg)
    for step, wer in [(1, 0.9), (2, 0.2), (3, 0.5)]:
        ckpt.save(step, _state(float(step)), {"step": step}, {"name": "m"}, wer=wer)
    ckpt.close()
    assert _steps(gcs, "unit/checkpoints") == ([2, 3], [])  # 1 deleted on GCS: neither best nor last two

    # A restarted run (preemption) must still know step 2 is the best: Orbax reads the WER back.
    again = Checkpointer(directory, cfg)
    for step in (4, 5):
        again.save(step, _state(float(step)), {"step": step}, {"name": "m"})
    again.close()
    assert _steps(gcs, "unit/checkpoints") == ([2, 4, 5], [])

    reopened = Checkpointer(directory, cfg)
    assert reopened.latest_step() == 5
    state, meta = reopened.restore(5, _abstract())
    assert meta == {"step": 5}
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.full((4, 2), 5.0))
    reopened.close()
    # The model-checkpoint resolver (serve, batch-infer, export, load_from) picks the best step by WER.
    assert str(resolve_checkpoint(directory)) == f"{directory}/2"
    np.testing.assert_array_equal(read_params(f"{directory}/5/params")[("w",)], np.full((4, 2), 5.0))


def test_half_written_step_on_gcs_is_never_picked_up(gcs):
    directory = gcs.uri("half", "checkpoints")
    ckpt = Checkpointer(directory, CheckpointConfig(keep_last=3, keep_best=0))
    ckpt.save(1, _state(1.0), {"step": 1}, {"name": "m"})
    ckpt.close()
    # Step 7 as a crash mid-save leaves it on GCS: every object but the commit marker.
    fs = gcs_fs(gcs)
    for name in gcs_files(gcs, "half/checkpoints/1"):
        if not name.endswith("/commit_success.txt"):
            fs.copy(name, name.replace("/checkpoints/1/", "/checkpoints/7/"))
    assert _steps(gcs, "half/checkpoints") == ([1], [7])
    again = Checkpointer(directory, CheckpointConfig(keep_last=3, keep_best=0))
    assert again.latest_step() == 1
    again.close()
    assert str(resolve_checkpoint(directory)) == f"{directory}/1"


def test_sigterm_and_kill9_mid_save_on_gcs_resume_bit_identical(gcs, tmp_path):
    """`sawt train` with checkpoint.dir=gs://: kill -9 while an async save is in flight (a step without its
    commit marker is left on GCS), then SIGTERM (saves, exits 42), then resume to the end: the parameters
    equal an uninterrupted run's, bit for bit."""
    args = ("train.steps=18", "checkpoint.every=3", "checkpoint.keep_last=2")
    env = _env(**gcs.env)
    ref = tmp_path / "ref"
    code, out = finish(sawt_train(ref, *args, env=env))
    assert code == 0, out

    run = tmp_path / "run"
    prefix = "runs/kill9/checkpoints"
    gs_args = (*args, f"checkpoint.dir={gcs.uri(prefix)}")
    half_written = []
    for _attempt in range(3):
        proc = sawt_train(run, *gs_args, env=env)
        # Kill -9 the moment a step exists on GCS without its commit marker: a save in flight.
        if not wait_for(lambda: bool(_steps(gcs, prefix)[1]), proc, timeout=300):
            proc.wait()
            continue
        proc.kill()
        proc.wait()
        committed, uncommitted = _steps(gcs, prefix)
        half_written += uncommitted
        if uncommitted:
            break
    assert half_written, "no kill landed during a save (the saves finished too fast to catch)"
    assert not (run / "checkpoints").exists()  # nothing went to the run dir: checkpoints are on GCS

    before = last_step(run)  # what the killed processes logged
    proc = sawt_train(run, *gs_args, env=env)
    if not wait_for(lambda: last_step(run) >= before + 2, proc):  # this process trains, handler installed
        raise AssertionError(finish(proc)[1])
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 42, out
    if committed:  # resumed from the last committed step, never from the half-written one
        assert f"resumed from {gcs.uri(prefix)}/{committed[-1]}\n" in out
    else:  # the kill hit the first save: nothing complete to resume, so it started over
        assert "resumed from" not in out and out.startswith("step 1:")
    after_sigterm, _ = _steps(gcs, prefix)
    assert after_sigterm[-1] >= before + 2  # the SIGTERM save committed

    code, out = finish(sawt_train(run, *gs_args, env=env))
    assert code == 0, out
    assert summary(run)["params_sha256"] == summary(ref)["params_sha256"]
    # The run dir records where its checkpoints are, so serving and export find them from the run dir.
    recorded = yaml.safe_load((run / "config.yaml").read_text())["checkpoint"]["dir"]
    assert recorded == gcs.uri(prefix)
    assert str(resolve_checkpoint(run)) == f"{gcs.uri(prefix)}/18"
    assert str(resolve_checkpoint(run / "checkpoints" / "18")) == f"{gcs.uri(prefix)}/18"


def _upload(gcs, local: Path, prefix: str) -> str:
    fs = gcs_fs(gcs)
    fs.put(str(local), f"{gcs.bucket}/{prefix}", recursive=True)
    return gcs.uri(prefix)


def test_export_and_load_read_a_gcs_checkpoint(gcs, tiny_checkpoint, tmp_path):
    from tools.hf.convert import orbax_to_hf

    uri = _upload(gcs, tiny_checkpoint, "models/tiny")
    config_gs, params_gs = load_model_checkpoint(uri)
    config_local, params_local = load_model_checkpoint(tiny_checkpoint)
    assert config_gs == config_local
    jax.tree.map(np.testing.assert_array_equal, params_gs, params_local)
    orbax_to_hf(uri, tmp_path / "from-gcs", show_progress=False, log=lambda *a: None)
    orbax_to_hf(tiny_checkpoint, tmp_path / "from-local", show_progress=False, log=lambda *a: None)
    names = sorted(p.name for p in (tmp_path / "from-local").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "from-gcs").iterdir())
    for name in names:
        assert (tmp_path / "from-gcs" / name).read_bytes() == (tmp_path / "from-local" / name).read_bytes()


def test_serve_reads_a_run_whose_checkpoints_are_on_gcs(gcs, tiny_checkpoint, tmp_path):
    """`sawt serve --checkpoint RUN_DIR`, RUN_DIR local (a mounted path on GKE) and its steps on gs://:
    the server loads the step from GCS, the tokenizer from ``RUN_DIR/model/`` (which the step's own
    ``gs://.../runs/RUN/`` lacks), and answers the official `openai` client."""

    import openai
    from helpers.processes import sawt_serve
    from helpers.serving import wav_bytes

    step = tmp_path / "step"  # a trainer step holds the params and model_config.json, no tokenizer
    shutil.copytree(tiny_checkpoint / "params", step / "params")
    shutil.copy2(tiny_checkpoint / "model_config.json", step / "model_config.json")
    step_uri = _upload(gcs, step, "served/checkpoints/7")
    (tmp_path / "commit_success.txt").write_text("committed")  # what Orbax writes last on gs://
    _upload(gcs, tmp_path / "commit_success.txt", "served/checkpoints/7/commit_success.txt")
    run = tmp_path / "run"
    (run / RUN_MODEL_DIR).mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"checkpoint": {"dir": gcs.uri("served/checkpoints")}}))
    for f in tiny_checkpoint.iterdir():  # the run's tokenizer and companion files, where sawt train puts them
        if f.is_file() and f.name != "model_config.json":
            shutil.copy2(f, run / RUN_MODEL_DIR / f.name)
    assert str(resolve_checkpoint(run)) == step_uri
    pinned = run / "checkpoints" / "7"  # a pinned step of the run: virtual, its steps are on gs://
    assert str(resolve_checkpoint(pinned)) == step_uri
    for given in (run, pinned):
        assert companion_dir(given, resolve_checkpoint(given)) == run / RUN_MODEL_DIR
    assert companion_dir(step_uri) is None  # nothing beside the step on GCS: the given path is needed

    args = [
        "--checkpoint", str(run), "--max-batch", "2", "--max-new-tokens", "4", "--window-s", "4",
        "--overlap-s", "1", "--log-level", "warning",
    ]  # fmt: skip
    with sawt_serve(args, env=_env(**gcs.env)) as (url, _proc):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        out = client.audio.transcriptions.create(
            model="sawt-asr", file=("a.wav", wav_bytes(1.5), "audio/wav")
        )
        assert isinstance(out.text, str) and out.usage.output_tokens > 0
    assert json.loads((tiny_checkpoint / "model_config.json").read_text())  # untouched
    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs.url
