"""The data pipeline end to end through the real `sawt` CLI: synth -> convert -> inspect -> a loader batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SAWT = [sys.executable, "-m", "sawt"]


def _run(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_synth_convert_inspect_load(tmp_path):
    tfrecord, arrayrecord = tmp_path / "tfrecord", tmp_path / "arrayrecord"
    synth = _run(
        [*SAWT, "data", "synth", "--out", str(tfrecord), "--n", "24", "--seed", "1", "--workers", "2"]
    )
    assert synth.returncode == 0, synth.stderr
    assert "train" in synth.stdout and "tokenizer" in synth.stdout
    for split in ("train", "validation", "test"):
        assert list((tfrecord / split).glob("*.tfrecord")), split

    again = _run([*SAWT, "data", "synth", "--out", str(tfrecord), "--n", "24"])
    assert again.returncode == 2 and "already holds" in again.stderr

    convert = _run([*SAWT, "data", "convert", "--src", str(tfrecord), "--dst", str(arrayrecord)])
    assert convert.returncode == 0, convert.stderr
    inspect = _run([*SAWT, "data", "inspect", str(arrayrecord)])
    assert inspect.returncode == 0, inspect.stderr
    assert "espeak_" in inspect.stdout and "total" in inspect.stdout

    from trainer.data.config import DataConfig
    from trainer.data.loader import make_loader

    loader = make_loader(
        DataConfig(dir=str(arrayrecord), num_threads=1), tfrecord / "tokenizer", "train", 0, 1, 0, 4
    )
    batch = next(loader)
    ok = [s == "ok" for s in batch["meta"]["status"]]
    assert any(ok)
    assert batch["audio_mel"].shape[:2] == (4, 128)
    assert np.all((batch["input_ids"] == 5).sum(axis=1) == batch["audio_tokens"])
    assert batch["loss_mask"][ok].sum() > 0


def test_demo_driver_runs_the_data_steps(tmp_path):
    out = tmp_path / "demo"
    demo = _run(
        [
            sys.executable,
            "-m",
            "tools.demo",
            "--out",
            str(out),
            "--n",
            "24",
            "--steps",
            "synth,convert,inspect,load",
        ]
    )
    assert demo.returncode == 0, demo.stderr
    for step in ("synth", "convert", "inspect", "load"):
        assert f"=== {step} done" in demo.stdout
    assert "$ sawt data synth" in demo.stdout
    assert (out / "arrayrecord" / "train" / "index.npz").is_file()
    rerun = _run([sys.executable, "-m", "tools.demo", "--out", str(out), "--n", "24", "--steps", "synth"])
    assert rerun.returncode == 0 and "already holds this corpus" in rerun.stdout
    bad = _run([sys.executable, "-m", "tools.demo", "--out", str(out), "--steps", "nope"])
    assert bad.returncode == 2 and "unknown step" in bad.stderr
