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
from trainer.data.shards import RecordRef, find_shards, shard_records

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


def test_hypotheses_cut_at_their_budget_are_counted_and_reported(
    tiny_checkpoint, split_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    args = ["batch-infer", "--checkpoint", str(tiny_checkpoint), "--data", str(split_dir), "--out", str(out)]
    assert sawt_main([*args, "--max-batch", "4", "--max-new-tokens", "1"]) == 0
    rows = _rows(out)
    cut = [r for r in rows if r["finish_reason"] == "length"]
    assert len(cut) == 6 and all(r["tokens"] == 1 for r in cut)  # one token, never an end token
    report = json.loads((out / "report.json").read_text())
    assert report["cut"] == 6
    assert "6 hypotheses cut at their length budget" in (out / "report.md").read_text()
    err = capsys.readouterr().err
    assert "warning: 6 hypotheses reached their length budget" in err


def test_bad_data_path_is_a_usage_error(tiny_checkpoint, tmp_path, capsys):
    code = sawt_main(
        ["batch-infer", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "nope"), "--out", "x"]
    )
    assert code == 2 and "no such data directory" in capsys.readouterr().err


def test_shards_are_disjoint_and_cover_the_split(split_dir):
    shards = find_shards(split_dir, None)
    parts = [shard_records(shards, i, 4) for i in range(4)]
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


def test_language_and_prompt_reach_the_prompt_ids(tiny_checkpoint, tmp_path):
    """--language / --prompt apply to every record, --language-field / --context-field read a record's own;
    each reaches the prompt ids the engine prefills (`trainer.data.text`, as in training)."""
    import asyncio

    import numpy as np
    from helpers.serving import RecordingRunner

    from core.fileio import DurableJsonl
    from inference_server.model_engine import ModelEngine, TextSide
    from trainer.data.audio import num_frames
    from trainer.data.example import encode_example
    from trainer.data.text import LANGUAGE_INSTRUCTIONS, asr_prompt_ids, load_tokenizer
    from trainer.model.geometry import encoder_token_count

    tok = load_tokenizer(tiny_checkpoint)
    wave = 0.1 * np.sin(np.arange(16000) / 5.0).astype(np.float32)

    def record(sid, **extra):
        base = {"audio": wave, "audio_len": 16000, "sample_rate": 16000, "duration": 1.0, "text": "نص",
                "dataset_name": "x", "sample_id": sid}  # fmt: skip
        return encode_example({**base, **extra})

    items = [
        record("own", lang="en", ctx="سلمى"),  # its own language and context
        record("global"),  # the global --language / --prompt
        record("bad", lang="fr"),  # no instruction for fr: counted bad, the run goes on
    ]
    refs = [(RecordRef(k, Path("s"), k), payload) for k, payload in enumerate(items)]
    fields = batch_infer.PromptFields("ar-en", "يوسف", "lang", "ctx")

    runner = RecordingRunner(tok.im_end_id)
    runner.num_slots = 1  # one record at a time: prefills come in record order
    engine = ModelEngine(
        lambda: runner, TextSide.from_tokenizer_dir(str(tiny_checkpoint)), model_name="m", n_window=50
    )

    class Bar:
        def update(self, n):
            pass

    async def main():
        await engine.start()
        try:
            with DurableJsonl(tmp_path / "p.jsonl") as sink:
                return await batch_infer._transcribe_all(engine, iter(refs), sink, set(), 1, Bar(), fields)
        finally:
            await engine.stop()

    counts = asyncio.run(main())
    assert counts == {"done": 2, "skipped": 0, "bad": 1}
    n_audio = int(encoder_token_count(num_frames(16000)))
    want = [
        asr_prompt_ids(tok, n_audio, LANGUAGE_INSTRUCTIONS["en"], "سلمى"),
        asr_prompt_ids(tok, n_audio, LANGUAGE_INSTRUCTIONS["ar-en"], "يوسف"),
    ]
    assert [p.input_ids.tolist() for p in runner.prefills] == want
    rows = {r["sample_id"]: r for r in read_jsonl(tmp_path / "p.jsonl")}
    assert rows["own"]["prompt_tokens"] == len(want[0]) and rows["global"]["prompt_tokens"] == len(want[1])


def test_unknown_language_flag_is_a_usage_error(tiny_checkpoint, split_dir, tmp_path, capsys):
    args = [
        "batch-infer",
        "--checkpoint",
        str(tiny_checkpoint),
        "--data",
        str(split_dir),
        "--out",
        str(tmp_path),
    ]
    assert sawt_main([*args, "--language", "xx"]) == 2
    assert "unsupported language 'xx'; supported: ar, ar-en, en" in capsys.readouterr().err
