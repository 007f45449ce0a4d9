"""`sawt data convert`: TFRecord shards of seed-schema speech Examples -> ArrayRecord shards for Grain.

For every source shard (``SRC/<rel>.tfrecord``) the converter writes ``DST/<rel>.array_record`` with the
same relative layout (so ``{train,validation,test}/`` of many shards stays that way). Records pass
through byte for byte: the ArrayRecord payloads are the TFRecord payloads, serialized Examples unchanged.

Per shard, in a worker process:
1. every record is read with its CRCs checked and decoded with `decode_speech` (which validates it);
2. good records go to a temporary, hidden ``.NAME.array_record.tmp`` written with ``group_size:1``
   (what Grain's random access needs), uncompressed unless ``--compression`` says otherwise;
3. the temporary file is verified (its record count equals the good records read, and its first and last
   records equal the source's) and only then renamed into place;
4. a sidecar ``DST/.convert/<rel>.json`` records the source's size and mtime, the per-record durations and
   sources, and every bad record. A re-run skips a shard whose output exists, whose sidecar matches the
   source and whose output still holds the recorded number of records; anything else is redone.

Bad records follow ``--on-error``: ``skip`` counts them by reason, keeps their bytes in
``DST/quarantine/<rel>.tfrecord`` and lists them (shard, offset, reason) in ``DST/quarantine.jsonl``;
``fail`` stops at the first one with a message naming the file, the byte offset and the reason. A bad
length CRC or a truncated file loses the rest of that shard (nothing after it can be located): that
counts as one skipped entry under its reason, with the bytes lost in its detail. Nothing is dropped
without being counted.

``--num-shards N --shard-index I`` splits one conversion over N processes or pods (a Kubernetes Indexed
Job): process I converts the sorted source shards i with ``i % N == I``. Every process then finalises if,
and only if, every source shard has a finished, verified sidecar; otherwise it names the shards still
pending and exits 0, so the last one to finish writes the outputs below. Finalisation reads only the
sidecars, so it is idempotent: concurrent finalisers write identical files, each atomically.

At the end the converter writes (atomically) ``DST/manifest.json`` (see tools/data/manifest.py),
``DST/quarantine.jsonl`` and, per split directory, ``index.npz``: ``duration`` (float32 s, =
audio_len / sample_rate), ``source_id`` (int32) and ``sources`` (the dataset names), one row per record in
the order of that directory's shards sorted by file name, plus ``shards`` and ``shard_records``, and the
transcripts as ``text_utf8`` (uint8, all texts' UTF-8 bytes end to end) with ``text_offsets`` (int64 [N+1]):
the packed batch plan needs every clip's token count before reading any record (trainer/data/packing.py).
Sidecars of shards converted before the transcripts were recorded lack them; their split's index is then
written without ``text_*``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import glob
import io
import json
import math
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir
from tools.data.manifest import build_manifest, format_report

SIDECAR_VERSION = 1
SIDECAR_DIR = ".convert"
QUARANTINE_DIR = "quarantine"
_TFRECORD_NAME = re.compile(r"\.tfrec(?:ord)?s?(?:\.gz)?(?=$|[-.])")
# A worker pool costs about a second to start (one interpreter, forked per worker): only worth it when
# each worker gets at least this much source data (serial conversion runs at ~75 MB/s on a 2-core VM).
PARALLEL_MIN_BYTES = 128 * 2**20
_COMPRESSION = {"none": "uncompressed", "zstd": "zstd:3", "snappy": "snappy"}


class ConvertFailure(Exception):
    """A bad record under ``--on-error fail`` (or an output that failed verification)."""


@dataclass(frozen=True)
class ShardJob:
    """One source shard to convert (plain data, so it pickles to worker processes)."""

    source: str  # absolute path of the TFRecord shard
    rel: str  # its path relative to the source root, posix
    output: str  # absolute path of the ArrayRecord shard
    out_rel: str  # output path relative to DST, posix
    split: str  # directory of the output relative to DST ("." for the root)
    dst: str
    options: str
    on_error: str
    sample_rate: int


# ------------------------------------------------------------------------------------------ discovery


def output_name(name: str) -> str:
    """``x.tfrecord`` -> ``x.array_record``; ``t.tfrecord-00001-of-00004`` -> ``t-00001-of-00004.array_record``."""
    stem = _TFRECORD_NAME.sub("", name, count=1)
    if stem.endswith(".gz"):
        stem = stem[:-3]
    return f"{stem}.array_record"


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def find_shards(src: str, dst: Path) -> list[tuple[Path, str]]:
    """(absolute path, path relative to the source root) of every TFRecord shard under ``src``.

    A directory is searched recursively for file names with a ``.tfrecord``/``.tfrec`` part (hidden files
    and anything under ``dst`` excluded); a glob takes every file it matches, relative to the glob's
    fixed leading directories.
    """
    from core.errors import UsageError

    dst = dst.resolve()
    path = Path(src)
    if path.is_dir():
        root = path.resolve()
        candidates = [
            p
            for p in root.rglob("*")
            if p.is_file() and _TFRECORD_NAME.search(p.name) and not _hidden(p, root)
        ]
    elif glob.has_magic(src):
        root = _glob_base(src).resolve()
        candidates = [Path(p).resolve() for p in glob.glob(src, recursive=True) if Path(p).is_file()]
    elif path.is_file():
        root = path.resolve().parent
        candidates = [path.resolve()]
    else:
        raise UsageError(f"--src {src}: no such file, directory or glob match")
    shards = sorted(
        (p, p.relative_to(root).as_posix()) for p in candidates if dst != p and dst not in p.parents
    )
    if not shards:
        raise UsageError(f"--src {src}: no TFRecord shards found (looked for *.tfrecord*, *.tfrec*)")
    return shards


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def plan_jobs(args: argparse.Namespace) -> list[ShardJob]:
    from core.errors import UsageError  # imported here: workers import this module and need none of the CLI

    dst = Path(args.dst).resolve()
    options = f"group_size:1,{_COMPRESSION[args.compression]}"
    jobs, seen = [], {}
    for source, rel in find_shards(args.src, dst):
        rel_path = Path(rel)
        out_rel = (rel_path.parent / output_name(rel_path.name)).as_posix()
        if out_rel in seen:
            raise UsageError(f"--src: {seen[out_rel]} and {rel} would both be written to {out_rel}")
        seen[out_rel] = rel
        jobs.append(
            ShardJob(
                source=str(source),
                rel=rel,
                output=str(dst / out_rel),
                out_rel=out_rel,
                split=rel_path.parent.as_posix(),
                dst=str(dst),
                options=options,
                on_error=args.on_error,
                sample_rate=args.sample_rate,
            )
        )
    return jobs


# ------------------------------------------------------------------------------------ one shard (worker)


def _sidecar_path(job: ShardJob) -> Path:
    return Path(job.dst) / SIDECAR_DIR / f"{job.out_rel}.json"


def _source_key(job: ShardJob) -> dict[str, Any]:
    st = os.stat(job.source)
    return {
        "version": SIDECAR_VERSION,
        "source": job.source,
        "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns,
        "options": job.options,
        "on_error": job.on_error,
        "sample_rate": job.sample_rate,
    }


def _array_record_count(path: str) -> int:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


def finished_result(job: ShardJob) -> dict[str, Any] | None:
    """The sidecar of a shard finished by an earlier run, if it still matches and verifies; else None."""
    sidecar = _sidecar_path(job)
    if not sidecar.exists() or not Path(job.output).exists():
        return None
    try:
        result = json.loads(sidecar.read_text())
        if any(result.get(k) != v for k, v in _source_key(job).items()):
            return None
        # Size first (a truncated ArrayRecord can open as an empty one), then the record count.
        if Path(job.output).stat().st_size != result["file_bytes"]:
            return None
        if _array_record_count(job.output) != result["records"]:
            return None
    except (OSError, ValueError, KeyError, RuntimeError):
        return None  # unreadable sidecar or output: redo the shard
    return result


def convert_shard(job: ShardJob) -> dict[str, Any]:
    """Converts one shard (or reuses a finished one) and returns its sidecar dict.

    Raises:
        ConvertFailure: a bad record under ``on_error=fail``, or an output that fails verification.
    """
    done = finished_result(job)
    if done is not None:
        done["resumed"] = True
        return done
    from array_record.python.array_record_module import ArrayRecordWriter

    from trainer.data.example import BadRecord, decode_speech
    from trainer.data.tfrecord import TFRecordWriter, scan_tfrecord

    key = _source_key(job)  # taken before reading, so a source changed mid-run is redone next time
    output = Path(job.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _sidecar_path(job).unlink(missing_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    quarantine_rel = f"{QUARANTINE_DIR}/{job.out_rel.removesuffix('.array_record')}.tfrecord"
    (Path(job.dst) / quarantine_rel).unlink(missing_ok=True)  # an earlier run's, now stale
    quarantine = None
    durations, sources, texts, record_bytes, bad = [], [], [], [], []
    first = last = None
    source_records = 0
    writer = ArrayRecordWriter(str(tmp), job.options)
    try:
        for entry in scan_tfrecord(job.source):
            payload = entry.payload
            source_records += payload is not None  # records located in the file, good or bad
            if entry.error is None:
                try:
                    rec = decode_speech(payload, expected_rate=job.sample_rate)
                except BadRecord as e:
                    reason, detail = e.reason, e.detail
                else:
                    writer.write(payload)
                    durations.append(rec.audio_len / rec.sample_rate)
                    sources.append(rec.dataset_name)
                    texts.append(rec.text)
                    record_bytes.append(len(payload))
                    first = payload if first is None else first
                    last = payload
                    continue
            else:
                reason, detail = entry.error.reason, entry.error.detail
            if job.on_error == "fail":
                raise ConvertFailure(
                    f"{job.source}: byte offset {entry.offset}: bad record ({reason}): {detail}"
                )
            item = {"shard": job.rel, "offset": entry.offset, "reason": reason, "detail": detail}
            if payload is not None:
                sample_id = _sample_id(payload)
                if sample_id is not None:
                    item["sample_id"] = sample_id
                if quarantine is None:
                    quarantine = TFRecordWriter(Path(job.dst) / quarantine_rel)
                item["quarantine_file"] = quarantine_rel
                item["quarantine_index"] = quarantine.count
                quarantine.write(payload)
            bad.append(item)
        writer.close()
        _fsync_file(tmp)  # the bytes are on disk before the name says the shard is finished
        written = _array_record_count(str(tmp))
        if written != len(durations):
            raise ConvertFailure(
                f"{tmp}: verification failed: {written} records written, {len(durations)} expected"
            )
        if durations:
            _check_ends(str(tmp), first, last)
        if quarantine is not None:
            quarantine.close()
        os.replace(tmp, output)
        fsync_dir(output.parent)
    except BaseException:
        if quarantine is not None:
            quarantine.abort()
        with contextlib.suppress(Exception):  # already failing; the temp file is removed next
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    result = {
        **key,
        "rel": job.rel,
        "output": job.out_rel,
        "split": job.split,
        "records": len(durations),
        "source_records": source_records,
        "file_bytes": output.stat().st_size,
        "durations": durations,
        "sources": sources,
        "texts": texts,
        "record_bytes": record_bytes,
        "bad": bad,
    }
    atomic_write_json(_sidecar_path(job), result)
    result["resumed"] = False
    return result


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sample_id(payload: bytes) -> str | None:
    """The sample_id of a bad record when it can still be read (to help find it upstream)."""
    from trainer.data.example import BadRecord, peek_speech_meta

    try:
        return peek_speech_meta(payload, expected_rate=None).sample_id
    except BadRecord:
        return None


def _check_ends(path: str, first: bytes, last: bytes) -> None:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        n = reader.num_records()
        if reader.read([0])[0] != first or reader.read([n - 1])[0] != last:
            raise ConvertFailure(f"{path}: verification failed: records differ from the source")
    finally:
        reader.close()


# ------------------------------------------------------------------------------------------- the run


def _run_jobs(jobs: list[ShardJob], workers: int):
    """Yields each job's result as it finishes; raises the first failure after cancelling the rest.

    Shards finished by an earlier run are yielded first, without starting any worker. The rest run in up
    to ``workers`` processes, but never more than one per PARALLEL_MIN_BYTES of source data.
    """
    pending = []
    for job in jobs:
        done = finished_result(job)
        if done is not None:
            done["resumed"] = True
            yield done
        else:
            pending.append(job)
    pending_bytes = sum(os.path.getsize(job.source) for job in pending)
    workers = min(workers, len(pending), max(1, math.ceil(pending_bytes / PARALLEL_MIN_BYTES)))
    if workers <= 1:
        for job in pending:
            yield convert_shard(job)
        return
    # forkserver: workers fork from one clean, single-threaded server that imported this module once;
    # plain fork is unsafe here (the parent may hold native threads) and spawn re-imports per worker.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(convert_shard, job) for job in pending]
        try:
            for fut in cf.as_completed(futures):
                yield fut.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def collect_finished(
    jobs: list[ShardJob], results: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[ShardJob]]:
    """Results for every job: this run's, else a verified sidecar left by another process.

    Returns:
        (results of the finished jobs, the jobs with no finished, verified sidecar yet).
    """
    own = {r["output"]: r for r in results}
    finished, pending = [], []
    for job in jobs:
        result = own.get(job.out_rel)
        if result is None:
            result = finished_result(job)
            if result is not None:
                result["resumed"] = True
        if result is None:
            pending.append(job)
        else:
            finished.append(result)
    return finished, pending


def write_indexes(dst: Path, results: list[dict[str, Any]]) -> list[Path]:
    """Writes ``index.npz`` in every split directory (see the module docstring); returns their paths."""
    by_split: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_split.setdefault(r["split"], []).append(r)
    paths = []
    for split, shards in sorted(by_split.items()):
        shards = sorted(shards, key=lambda r: Path(r["output"]).name)
        names = sorted({s for r in shards for s in r["sources"]})
        ids = {n: i for i, n in enumerate(names)}
        arrays = dict(
            duration=np.asarray([d for r in shards for d in r["durations"]], dtype=np.float32),
            source_id=np.asarray([ids[s] for r in shards for s in r["sources"]], dtype=np.int32),
            sources=np.asarray(names, dtype=np.str_),
            shards=np.asarray([Path(r["output"]).name for r in shards], dtype=np.str_),
            shard_records=np.asarray([r["records"] for r in shards], dtype=np.int64),
        )
        if all("texts" in r for r in shards):
            encoded = [t.encode("utf-8") for r in shards for t in r["texts"]]
            arrays["text_offsets"] = np.concatenate([[0], np.cumsum([len(t) for t in encoded])]).astype(
                np.int64
            )
            arrays["text_utf8"] = np.frombuffer(b"".join(encoded), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path = dst / split / "index.npz"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def write_outputs(dst: Path, results: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """Writes manifest.json, quarantine.jsonl and the per-split indexes; returns the manifest."""
    results = sorted(results, key=lambda r: r["output"])
    splits: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        shard = {
            "path": r["output"],
            "source": r["rel"],
            "records": r["records"],
            "source_records": r["source_records"],
            "skipped": len(r["bad"]),
            "file_bytes": r["file_bytes"],
        }
        splits.setdefault(r["split"], []).append({**r, "shard": shard})
    manifest = build_manifest(splits, extra)
    write_indexes(dst, results)
    lines = [json.dumps(b, ensure_ascii=False) for r in results for b in r["bad"]]
    atomic_write_text(dst / "quarantine.jsonl", "".join(line + "\n" for line in lines))
    atomic_write_json(dst / "manifest.json", manifest)
    return manifest


def select_jobs(jobs: list[ShardJob], num_shards: int, shard_index: int) -> list[ShardJob]:
    """The jobs of process ``shard_index`` of ``num_shards``: every ``num_shards``-th of the sorted list.

    Round-robin over the sorted shards (rather than contiguous blocks) spreads every split, and shards of
    similar size that sit next to each other, over all the processes.
    """
    return [job for i, job in enumerate(jobs) if i % num_shards == shard_index]


def _check_sharding(args: argparse.Namespace) -> tuple[int, int]:
    from core.errors import UsageError

    # getattr: main() is also called with a Namespace built in code, without these flags.
    num_shards = getattr(args, "num_shards", 1)
    shard_index = getattr(args, "shard_index", 0)
    if num_shards < 1:
        raise UsageError(f"--num-shards {num_shards}: must be at least 1")
    if not 0 <= shard_index < num_shards:
        raise UsageError(
            f"--shard-index {shard_index}: must be in [0, {num_shards}) for --num-shards {num_shards}"
        )
    return num_shards, shard_index


def main(args: argparse.Namespace) -> int:
    """Runs the conversion described by the parsed ``sawt data convert`` arguments."""
    from core.errors import UsageError
    from core.progress import progress

    args.compression = getattr(args, "compression", None) or "none"
    args.sample_rate = getattr(args, "sample_rate", None) or 16000
    if args.compression not in _COMPRESSION:
        raise UsageError(f"--compression {args.compression}: choose one of {', '.join(_COMPRESSION)}")
    workers = args.workers or os.cpu_count() or 1
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    num_shards, shard_index = _check_sharding(args)
    dst = Path(args.dst).resolve()
    jobs = plan_jobs(args)
    mine = select_jobs(jobs, num_shards, shard_index)
    dst.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results: list[dict[str, Any]] = []
    desc = "convert" if num_shards == 1 else f"convert {shard_index}/{num_shards}"
    bar = progress(total=len(mine), desc=desc, unit="shard")
    try:
        for result in _run_jobs(mine, workers):
            results.append(result)
            bar.update(1)
            bar.set_postfix(records=sum(r["records"] for r in results), refresh=False)
    except (ConvertFailure, OSError) as e:  # a bad record under --on-error fail, or an unreadable source
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        print(
            f"sawt data convert: stopped; {len(results)} of {len(mine)} shards finished "
            "and are kept, a re-run resumes from them",
            file=sys.stderr,
        )
        return 1
    bar.close()
    if num_shards > 1:
        print(
            f"shard-index {shard_index} of {num_shards}: converted {len(mine)} of {len(jobs)} source shards "
            f"({sum(1 for r in results if r['resumed'])} already done) in {time.monotonic() - start:.1f} s"
        )
        results, pending = collect_finished(jobs, results)
        if pending:
            print(
                f"{len(pending)} of {len(jobs)} source shards still pending (other shard indexes): "
                + ", ".join(job.rel for job in pending[:10])
                + (" ..." if len(pending) > 10 else "")
                + f"; the last process to finish writes {dst / 'manifest.json'}"
            )
            return 0
        print(f"every source shard is finished: writing {dst / 'manifest.json'} for the whole data set")
    extra = {
        "source": str(Path(args.src).resolve()) if not glob.has_magic(args.src) else args.src,
        "writer_options": jobs[0].options,
        "sample_rate": args.sample_rate,
        "on_error": args.on_error,
    }
    manifest = write_outputs(dst, results, extra)
    expected = {Path(job.output) for job in jobs}
    stale = sorted(
        p
        for p in dst.rglob("*.array_record")
        if p not in expected and not _hidden(p, dst) and QUARANTINE_DIR not in p.relative_to(dst).parts
    )
    if stale:
        # Not deleted (they may be someone's data), but the loader would read them: say so loudly.
        print(
            f"warning: {len(stale)} ArrayRecord file(s) in {dst} have no source in this run and are not in "
            f"manifest.json or index.npz; delete them before training: "
            + ", ".join(str(p.relative_to(dst)) for p in stale[:5])
            + (" ..." if len(stale) > 5 else ""),
            file=sys.stderr,
        )
    resumed = sum(1 for r in results if r["resumed"])
    skipped = sum(manifest["skipped"].values())
    print(format_report(manifest, histograms=False))
    print(
        f"\nconverted {len(jobs)} shards ({resumed} already done) in {time.monotonic() - start:.1f} s -> {dst}"
        + (f"; {skipped} bad records quarantined (see {dst / 'quarantine.jsonl'})" if skipped else "")
    )
    return 0
