"""`sawt batch-infer`: transcribe an ArrayRecord split with the serving engine, resumably, and score it.

Sharding: records are numbered in shard-name order; process ``i`` of ``n`` takes records with
``number % n == i`` (disjoint, as on the v4-32's 4 hosts, one engine per host). Each process appends to its
own ``OUT/predictions-<i>-of-<n>.jsonl`` with `DurableJsonl` (append + fsync), so a crash loses at most the
line being written. A re-run reads every ``predictions-*.jsonl`` under OUT and skips the ids already there,
whatever the process count was. When all processes have written their ``.done`` marker, process 0 (or the
local launcher) writes the WER/CER report, overall and per source: ``OUT/report.json`` and
``OUT/report.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.fileio import DurableJsonl, atomic_write_json, atomic_write_text, read_jsonl
from trainer.data.shards import RecordRef, find_shards, read_records, shard_records

log = logging.getLogger("sawt.batch_infer")

PREDICTIONS_GLOB = "predictions-*.jsonl"


def done_ids(out: Path) -> set[str]:
    """Sample ids already written by any process of any earlier run (resume)."""
    ids: set[str] = set()
    for path in sorted(out.glob(PREDICTIONS_GLOB)):
        for rec in read_jsonl(path):
            if rec.get("sample_id") is not None:
                ids.add(str(rec["sample_id"]))
    return ids


@dataclass(frozen=True)
class PromptFields:
    """What conditions each record's prompt, as a request's ``language`` and ``prompt`` do in the server.

    Attributes:
        language, prompt: for every record (``--language``, ``--prompt``).
        language_field, context_field: text features that, where a record has them, give its own language
            and context instead (as ``data.language_field`` / ``data.context_field`` do in training).
    """

    language: str | None = None
    prompt: str | None = None
    language_field: str | None = None
    context_field: str | None = None

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f for f in (self.language_field, self.context_field) if f)

    def of(self, rec: Any) -> tuple[str | None, str | None]:
        language = rec.extra.get(self.language_field, self.language) if self.language_field else self.language
        prompt = rec.extra.get(self.context_field, self.prompt) if self.context_field else self.prompt
        return language, prompt


async def _transcribe_all(engine: Any, items: Iterator[tuple[RecordRef, bytes]], sink: DurableJsonl,
                          skip: set[str], concurrency: int, bar: Any,
                          fields: PromptFields | None = None) -> dict[str, int]:  # fmt: skip
    from inference_server.engine import BadRequest, Finished, QueueFull, TranscribeParams
    from trainer.data.audio_io import resample
    from trainer.data.example import BadRecord, DecodeError, decode_speech

    fields = fields or PromptFields()
    counts = {"done": 0, "skipped": 0, "bad": 0}
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task] = set()

    async def one(ref: RecordRef, rec: Any) -> None:
        try:
            wave = resample(rec.audio, rec.sample_rate)
            language, prompt = fields.of(rec)
            params = TranscribeParams(audio=wave, language=language, prompt=prompt)
            while True:
                try:
                    events = engine.transcribe(params)
                    break
                except QueueFull:
                    await asyncio.sleep(0.05)
                except BadRequest as err:  # e.g. a record's language without an instruction: not fatal
                    log.warning("%s record %d: %s", ref.shard.name, ref.index, err)
                    counts["bad"] += 1
                    return
            result = None
            async for event in events:
                if isinstance(event, Finished):
                    result = event
            assert result is not None
            sink.append(
                {
                    "sample_id": rec.sample_id,
                    "dataset_name": rec.dataset_name,
                    "reference": rec.text,
                    "hypothesis": result.text,
                    "audio_seconds": round(len(wave) / 16000, 3),
                    "tokens": result.stats.generation_tokens,
                    "prompt_tokens": result.stats.prompt_tokens,
                    "finish_reason": result.finish_reason,
                }
            )
            counts["done"] += 1
        finally:
            slots.release()
            bar.update(1)

    for ref, payload in items:
        try:
            rec = decode_speech(payload, expected_rate=None, optional_text=fields.features)
        except (BadRecord, DecodeError) as err:
            log.warning("%s record %d: %s", ref.shard.name, ref.index, err)
            counts["bad"] += 1
            bar.update(1)
            continue
        if rec.sample_id in skip:
            counts["skipped"] += 1
            bar.update(1)
            continue
        await slots.acquire()
        task = asyncio.create_task(one(ref, rec))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return counts


def run_process(
    checkpoint: str,
    data: str,
    out: Path,
    *,
    split: str | None,
    process_index: int,
    num_processes: int,
    max_batch: int,
    max_new_tokens: int,
    window_s: float,
    overlap_s: float,
    tensor_parallel: int = 1,
    fields: PromptFields | None = None,
    cut: str = "silence",
) -> dict[str, int]:
    """Transcribes this process's records; writes the ``.done`` marker at the end."""
    from core.progress import progress
    from inference_server.config import ServerConfig
    from inference_server.main import build_engine

    out.mkdir(parents=True, exist_ok=True)
    _marker(out, process_index, num_processes).unlink(missing_ok=True)
    shards = find_shards(data, split)
    refs = shard_records(shards, process_index, num_processes)
    skip = done_ids(out)
    config = ServerConfig(
        max_batch=max_batch, max_queue=1_000_000, max_new_tokens=max_new_tokens, window_s=window_s,
        overlap_s=overlap_s, tensor_parallel=tensor_parallel, cut=cut,
    )  # fmt: skip
    engine = build_engine(checkpoint, config)
    name = f"predictions-{process_index:05d}-of-{num_processes:05d}.jsonl"

    async def main() -> dict[str, int]:
        await engine.start()
        try:
            with DurableJsonl(out / name) as sink:
                bar = progress(
                    total=len(refs), desc=f"batch-infer {process_index}/{num_processes}", unit="clip"
                )
                try:
                    return await _transcribe_all(
                        engine, read_records(refs), sink, skip, 2 * max_batch, bar, fields
                    )
                finally:
                    bar.close()
        finally:
            await engine.stop()

    counts = asyncio.run(main())
    atomic_write_json(_marker(out, process_index, num_processes), counts)
    log.info("process %d/%d: %s", process_index, num_processes, counts)
    return counts


def _marker(out: Path, i: int, n: int) -> Path:
    return out / f".done-{i:05d}-of-{n:05d}"


def wait_for_markers(out: Path, num_processes: int, timeout_s: float, since: float = 0.0) -> None:
    """Waits until every process has written its ``.done`` marker after ``since`` (a wall-clock time), so
    markers of an earlier run do not count."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [
            i
            for i in range(num_processes)
            if not (m := _marker(out, i, num_processes)).exists() or m.stat().st_mtime < since
        ]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {missing} did not finish within {timeout_s:.0f} s")
        time.sleep(2.0)


def write_report(out: Path) -> dict[str, Any]:
    """Scores every prediction under ``out``: ``report.json`` and ``report.md``; returns the report."""
    from trainer.asr_metrics import score

    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob(PREDICTIONS_GLOB)):
        for rec in read_jsonl(path):
            rows[str(rec["sample_id"])] = rec  # a re-run never duplicates, but be safe
    ordered = [rows[k] for k in sorted(rows)]
    result = score(
        [r["reference"] for r in ordered],
        [r["hypothesis"] for r in ordered],
        [r["dataset_name"] for r in ordered],
    )
    audio_s = sum(r.get("audio_seconds", 0.0) for r in ordered)
    # Hypotheses that reached their generation budget (finish reason "length"): cut, and counted.
    cut = sum(1 for r in ordered if r.get("finish_reason") == "length")
    report = {"samples": len(ordered), "audio_seconds": round(audio_s, 3), "cut": cut, **result}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        "# Batch inference report",
        "",
        f"{report['samples']} samples, {report['audio_seconds'] / 3600:.2f} h of audio; "
        f"{report.get('cut', 0)} hypotheses cut at their length budget.",
        "",
        "| source | samples | WER % | CER % | word errors / ref words |",
        "|---|---:|---:|---:|---:|",
    ]

    def row(name: str, s: dict[str, Any]) -> str:
        return (
            f"| {name} | {s['count']} | {100 * s['wer']:.2f} | {100 * s['cer']:.2f} | "
            f"{s['word_errors']} / {s['ref_words']} |"
        )

    for name, s in report["per_source"].items():
        lines.append(row(name, s))
    lines.append(row("**overall**", report["overall"]))
    return "\n".join(lines) + "\n"


def launch_local(argv: list[str], num_processes: int) -> int:
    """Runs ``sawt batch-infer ARGV`` as ``num_processes`` subprocesses (disjoint shards); forwards SIGTERM."""
    children = []
    for i in range(num_processes):
        env = dict(os.environ, SAWT_PROCESS_ID=str(i), SAWT_NUM_PROCESSES=str(num_processes))
        env.setdefault("JAX_PLATFORMS", "cpu")
        cmd = [sys.executable, "-m", "sawt", "batch-infer", *argv, "--no-report"]
        children.append(subprocess.Popen(cmd, env=env))

    def forward(signum: int, frame: object) -> None:
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [c.wait() for c in children]
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [c for c in codes if c != 0]
    return failed[0] if failed else 0


def print_summary(report: dict[str, Any]) -> None:
    summary = {"samples": report["samples"], "cut": report.get("cut", 0), "overall": report["overall"]}
    print(json.dumps(summary, ensure_ascii=False))
    if report.get("cut"):
        print(
            f"sawt batch-infer: warning: {report['cut']} hypotheses reached their length budget (raise "
            "--max-new-tokens, the cap)",
            file=sys.stderr,
        )
