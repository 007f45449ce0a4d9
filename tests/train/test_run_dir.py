"""A run directory describes itself: which step a run denotes, and where its companion files are."""

from __future__ import annotations

import json

from trainer.model_checkpoint import checkpoint_path, companion_dir, resolve_checkpoint


def _step(run, step, wer=None, commit=False):
    d = run / "checkpoints" / str(step)
    (d / "params").mkdir(parents=True)
    (d / "model_config.json").write_text("{}")
    (d / "train_meta").mkdir()
    (d / "train_meta" / "train_meta.json").write_text(json.dumps({"step": step, "wer": wer}))
    if commit:
        (d / "commit_success.txt").write_text("ok")
    return d


def test_a_run_denotes_its_best_step_by_wer_else_its_latest(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6):
        _step(run, step)
    assert resolve_checkpoint(run) == run / "checkpoints" / "6"
    assert resolve_checkpoint(run / "checkpoints") == run / "checkpoints" / "6"
    _step(run, 8, wer=0.4)
    _step(run, 10, wer=0.2)
    _step(run, 12, wer=0.2)
    _step(run, 14, wer=0.5)
    assert resolve_checkpoint(run) == run / "checkpoints" / "12"  # lowest WER, the later of equals
    assert resolve_checkpoint(run / "checkpoints" / "4") == run / "checkpoints" / "4"  # a step as given


def test_a_relative_run_path_resolves_to_an_absolute_step(tmp_path, monkeypatch):
    """Orbax reads a multi-process OCDBT checkpoint only from an absolute path (`make bench-longform` passes
    build/demo/run), so a relative local path resolves to an absolute step; gs:// is left as given."""
    run = tmp_path / "run"
    _step(run, 2)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_checkpoint("run")
    assert resolved.is_absolute() and resolved == run / "checkpoints" / "2"
    assert str(checkpoint_path("gs://bucket/runs/r")) == "gs://bucket/runs/r"


def test_companion_files_of_a_run_step_and_converted_checkpoint(tmp_path):
    run = tmp_path / "run"
    step = _step(run, 2)
    assert companion_dir(step) is None
    (run / "model").mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (run / "model" / name).write_text("{}")
    assert companion_dir(step) == companion_dir(run) == companion_dir(run / "checkpoints") == run / "model"
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "tokenizer.json").write_text("{}")
    assert companion_dir(ck) == ck
