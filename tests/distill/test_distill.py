"""`sawt distill generate-cot` / `build-sft` against a real HTTP teacher (the stand-in in teacher_stub.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import TEXTS

from core.fileio import read_jsonl
from sawt.cli import main as sawt_main
from tools.distill.build_sft import sft_target
from tools.distill.generate_cot import parse_reply

REPO = Path(__file__).resolve().parents[2]


def _gen(teacher, split_dir, out, *extra):
    return sawt_main(
        ["distill", "generate-cot", "--teacher-url", teacher.url, "--model", "teacher-x", "--data",
         str(split_dir), "--out", str(out), "--backoff", "0.01", *extra]
    )  # fmt: skip


def test_generate_cot_retries_counts_failures_and_resumes(teacher, split_dir, tmp_path, capsys):
    out = tmp_path / "cot"
    teacher.fail_first[TEXTS[1]] = (2, 503)  # transient: retried
    teacher.fail_first[TEXTS[2]] = (1, 429)  # rate limited: retried
    teacher.fail_first[TEXTS[3]] = (99, 400)  # permanent: counted as failed, not retried
    assert _gen(teacher, split_dir, out, "--concurrency", "3") == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done"] == 7 and summary["failed"] == 1 and summary["retries"] == 3
    assert teacher.calls[TEXTS[1]] == 3 and teacher.calls[TEXTS[3]] == 1
    rows = list(read_jsonl(out / "cot.jsonl"))
    assert len(rows) == 7 and all(r["reasoning"].startswith("The speaker says") for r in rows)
    assert {r["sample_id"]: r["answer"] for r in rows}["s0"] == TEXTS[0]
    assert [r["sample_id"] for r in read_jsonl(out / "failures.jsonl")] == ["s3"]

    # The next run asks only for what is missing.
    teacher.fail_first.clear()
    before = sum(teacher.calls.values())
    assert _gen(teacher, split_dir, out) == 0
    assert sum(teacher.calls.values()) - before == 1
    assert sorted(r["sample_id"] for r in read_jsonl(out / "cot.jsonl")) == [f"s{k}" for k in range(8)]


def test_generate_cot_killed_midway_loses_nothing(teacher, split_dir, tmp_path):
    teacher.delay_s = 0.3
    out = tmp_path / "cot"
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "sawt", "distill", "generate-cot", "--teacher-url", teacher.url, "--model",
           "teacher-x", "--data", str(split_dir), "--out", str(out), "--concurrency", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(read_jsonl(out / "cot.jsonl"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    finished = [r["sample_id"] for r in read_jsonl(out / "cot.jsonl")]
    assert 3 <= len(finished) < 8
    teacher.delay_s = 0.0
    calls_before = sum(teacher.calls.values())
    assert _gen(teacher, split_dir, out) == 0
    rows = [r["sample_id"] for r in read_jsonl(out / "cot.jsonl")]
    assert sorted(rows) == [f"s{k}" for k in range(8)]  # all there, none twice
    assert rows[: len(finished)] == finished  # finished items were kept, not redone
    assert sum(teacher.calls.values()) - calls_before == 8 - len(finished)


def test_build_sft_records_are_read_by_the_trainer(teacher, split_dir, tmp_path):
    from array_record.python.array_record_module import ArrayRecordReader

    from trainer.data.example import decode_example, decode_speech
    from trainer.data.loader import read_index
    from trainer.data.shards import split_shards

    cot = tmp_path / "cot"
    teacher.fail_first[TEXTS[5]] = (99, 400)  # one sample without a trace
    _gen(teacher, split_dir, cot)
    out = tmp_path / "sft"
    assert (
        sawt_main(["distill", "build-sft", "--cot", str(cot), "--data", str(split_dir), "--out", str(out)])
        == 0
    )
    summary = json.loads((out / "train" / "build_summary.json").read_text())
    assert summary == {"written": 7, "no_trace": 1, "bad": 0, "traces": 7}

    shards = split_shards(out, "train")
    index = read_index(out, "train", shards)
    assert len(index.duration) == 7 and set(index.sources) == {"cv", "mgb2"}
    traces = {r["sample_id"]: r for r in read_jsonl(cot / "cot.jsonl")}
    src = {}
    reader = ArrayRecordReader(str(next(split_dir.glob("*.array_record"))))
    for payload in reader.read_all():
        rec = decode_speech(payload)
        src[rec.sample_id] = rec
    reader.close()
    seen = 0
    for shard in shards:
        reader = ArrayRecordReader(str(shard))
        for payload in reader.read_all():
            rec = decode_speech(payload)  # the trainer's decoder reads it
            raw = decode_example(payload)
            transcript = raw["transcript"][0].decode()
            assert rec.text == sft_target(traces[rec.sample_id]["reasoning"], transcript)
            assert rec.text.startswith("<think>\n") and rec.text.endswith("</think>\n\n" + transcript)
            assert raw["reasoning"][0].decode() == traces[rec.sample_id]["reasoning"]
            if rec.sample_id in src:
                np.testing.assert_array_equal(rec.audio, src[rec.sample_id].audio)
            seen += 1
        reader.close()
    assert seen == 7


def test_parse_reply_variants():
    assert parse_reply("<think>a b</think>\nhello") == ("a b", "hello")
    assert parse_reply("<reasoning>r</reasoning><answer>x</answer>") == ("r", "x")
    assert parse_reply("just the answer", reasoning_content="thought") == ("thought", "just the answer")
    import pytest

    from tools.distill.generate_cot import TeacherError

    with pytest.raises(TeacherError):
        parse_reply("no reasoning here")
