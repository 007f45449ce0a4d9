"""`sawt batch-infer` on a tiny real checkpoint: outputs, report, resume after a crash, process sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.fileio import read_jsonl
from inference_server import batch_infer
from sawt.cli import main as sawt_main

REPO = Path(__file__).resolve().parents[2]
FAST = ["--max-batch", "4", "--max-new-tokens", "6", "--window-s", "4", "--overlap-s", "1"]


def _rows(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("predictions-*.jsonl")) for r in read_jsonl(p)]


def test_batch_infer_writes_predictions_report_and_resumes(tiny_checkpoint, split_dir, tmp_path):
    out = tmp_path / "out"
    args = ["batch-infer", "--checkpoint", str(tiny_checkpoint), "--data", str(split_dir), "--out", str(out)]
    assert sawt_main(args + FAST) == 0
    rows = _rows(out)
    assert sorted(r["sample_id"] for r in rows) == [f"id{k}" for k in range(6)]
    for r in rows:
        assert set(r) >= {"sample_id", "dataset_name", "reference", "hypothesis", "audio_seconds", "tokens"}
        assert r["reference"] in {"مرحبا بكم", "السلام عليكم", "شكرا جزيلا"}
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 6 and set(report["per_source"]) == {"cv", "mgb2"}
    assert report["overall"]["ref_words"] == sum(len(r["reference"].split()) for r in rows)
    assert "| **overall** | 6 |" in (out / "report.md").read_text()

    # A crash: keep 2 whole lines plus a torn third; the re-run transcribes only the 4 missing clips.
    pred = next(out.glob("predictions-*.jsonl"))
    lines = pred.read_bytes().splitlines(keepends=True)
    pred.write_bytes(b"".join(lines[:2]) + lines[2][:10])
    kept = {json.loads(line)["sample_id"] for line in lines[:2]}
    counts = batch_infer.run_process(
        str(tiny_checkpoint), str(split_dir), out, split=None, process_index=0, num_processes=1,
        max_batch=4, max_new_tokens=6, window_s=4.0, overlap_s=1.0,
    )  # fmt: skip
    assert counts == {"done": 4, "skipped": 2, "bad": 0}
    rows = _rows(out)
    assert sorted(r["sample_id"] for r in rows) == [f"id{k}" for k in range(6)]  # no loss, no duplicates
    assert kept <= {r["sample_id"] for r in rows}


def test_bad_data_path_is_a_usage_error(tiny_checkpoint, tmp_path, capsys):
    code = sawt_main(
        ["batch-infer", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "nope"), "--out", "x"]
    )
    assert code == 2 and "no such data directory" in capsys.readouterr().err


def test_shards_are_disjoint_and_cover_the_split(split_dir):
    shards = batch_infer.find_shards(split_dir, None)
    parts = [batch_infer.shard_records(shards, i, 4) for i in range(4)]
    numbers = [r.number for p in parts for r in p]
    assert sorted(numbers) == list(range(6))


@pytest.mark.slow
def test_local_processes_shard_the_work(tiny_checkpoint, split_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "sawt", "batch-infer", "--checkpoint", str(tiny_checkpoint), "--data",
           str(split_dir), "--out", str(out), "--local-processes", "2", *FAST]  # fmt: skip
    subprocess.run(cmd, env=env, cwd=REPO, check=True, timeout=900)
    files = sorted(out.glob("predictions-*.jsonl"))
    assert [f.name for f in files] == ["predictions-00000-of-00002.jsonl", "predictions-00001-of-00002.jsonl"]
    ids = [sorted(r["sample_id"] for r in read_jsonl(f)) for f in files]
    assert ids == [["id0", "id3", "id4"], ["id1", "id2", "id5"]]  # records numbered in shard order
    assert json.loads((out / "report.json").read_text())["samples"] == 6
