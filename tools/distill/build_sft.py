"""`sawt distill build-sft`: join reasoning traces with their audio into ArrayRecord SFT records.

Each output record is a seed-schema speech record (``audio``, ``audio_len``, ``sample_rate``, ``duration``,
``text``, ``dataset_name``, ``sample_id``), so the trainer's loader reads it unchanged, with ``text`` the SFT
target in this layout (Qwen3's thinking format)::

    <think>
    {reasoning}
    </think>

    {transcript}

plus the parts as extra features: ``reasoning``, ``transcript`` (the reference) and ``teacher_answer``.
Records go to ``OUT/<split>/sft-NNNNN.array_record`` (written under a temporary name, then renamed), with
``OUT/<split>/index.npz`` in the converter's format (`tools.data.convert.write_indexes`) and
``OUT/<split>/build_summary.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from core.fileio import atomic_write_json, read_jsonl

log = logging.getLogger("sawt.distill")

RECORDS_PER_SHARD = 2048


def sft_target(reasoning: str, transcript: str) -> str:
    """The SFT target text: the reasoning in a think block, then the transcript (see module docstring)."""
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{transcript.strip()}"


def build(
    cot_dir: Path, data: str, out: Path, *, split: str | None, out_split: str = "train"
) -> dict[str, Any]:
    """Writes the SFT split; returns counts (written, without a trace, bad records)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from core.progress import progress
    from tools.data.convert import write_indexes
    from trainer.data.example import BadRecord, decode_speech, encode_example
    from trainer.data.shards import iter_split

    cot_file = cot_dir / "cot.jsonl" if cot_dir.is_dir() else cot_dir
    if not cot_file.is_file():
        raise FileNotFoundError(f"{cot_file}: no traces (run `sawt distill generate-cot` first)")
    traces = {str(r["sample_id"]): r for r in read_jsonl(cot_file)}
    dest = out / out_split
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob("sft-*.array_record*"):
        stale.unlink()  # a rebuild replaces the split as a whole
    counts = {"written": 0, "no_trace": 0, "bad": 0, "traces": len(traces)}
    shards: list[dict[str, Any]] = []
    writer = None
    current: dict[str, Any] = {}

    def close_shard() -> None:
        nonlocal writer
        if writer is None:
            return
        writer.close()
        os.replace(current["tmp"], current["output"])
        shards.append(current.copy())
        writer = None

    for ref, payload in progress(iter_split(data, split), desc="build-sft", unit="record"):
        try:
            rec = decode_speech(payload, expected_rate=None)
        except BadRecord as err:
            log.warning("%s record %d: %s", ref.shard.name, ref.index, err)
            counts["bad"] += 1
            continue
        trace = traces.get(rec.sample_id)
        if trace is None:
            counts["no_trace"] += 1
            continue
        if writer is None:
            name = dest / f"sft-{len(shards):05d}.array_record"
            current = {"split": out_split, "output": str(name), "tmp": str(name) + ".tmp", "records": 0,
                       "sources": [], "durations": []}  # fmt: skip
            writer = ArrayRecordWriter(current["tmp"], "group_size:1")
        features = {
            "audio": rec.audio,
            "audio_len": int(rec.audio_len),
            "sample_rate": int(rec.sample_rate),
            "duration": float(rec.duration),
            "text": sft_target(trace["reasoning"], rec.text),
            "dataset_name": rec.dataset_name,
            "sample_id": rec.sample_id,
            "reasoning": trace["reasoning"],
            "transcript": rec.text,
            "teacher_answer": trace.get("answer", ""),
        }
        writer.write(encode_example(features))
        current["records"] += 1
        current["sources"].append(rec.dataset_name)
        current["durations"].append(float(rec.duration))
        counts["written"] += 1
        if current["records"] >= RECORDS_PER_SHARD:
            close_shard()
    close_shard()
    if shards:
        write_indexes(out, shards)
    atomic_write_json(dest / "build_summary.json", counts)
    return counts
