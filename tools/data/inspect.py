"""`sawt data inspect PATH`: records, hours and duration histograms per split and source.

PATH is a converted ArrayRecord directory (its manifest.json is read; ``--scan`` reads every record
instead, e.g. for a directory written by something else) or a manifest.json file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.errors import UsageError
from tools.data.manifest import MANIFEST_FORMAT, build_manifest, format_report

_BATCH = 256


def load_manifest(path: Path) -> dict[str, Any]:
    """Reads and sanity-checks a manifest.json."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable JSON manifest ({e})") from e
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != MANIFEST_FORMAT
        or "splits" not in manifest
    ):
        raise UsageError(f"{path}: not a sawt manifest (expected format {MANIFEST_FORMAT!r})")
    return manifest


def scan_directory(root: Path) -> dict[str, Any]:
    """Builds the manifest statistics by reading every record of every ArrayRecord shard under ``root``."""
    from array_record.python.array_record_module import ArrayRecordReader

    from core.progress import progress
    from trainer.data.example import BadRecord, peek_speech_meta

    shards = sorted(
        p
        for p in root.rglob("*.array_record")
        if not any(part.startswith(".") or part == "quarantine" for part in p.relative_to(root).parts)
    )
    if not shards:
        raise UsageError(f"{root}: no *.array_record shards found")
    splits: dict[str, list[dict[str, Any]]] = {}
    for shard in progress(shards, desc="inspect", unit="shard"):
        reader = ArrayRecordReader(str(shard))
        durations, sources, record_bytes, bad = [], [], [], []
        try:
            n = reader.num_records()
            for start in range(0, n, _BATCH):
                for i, payload in enumerate(reader.read(list(range(start, min(n, start + _BATCH))))):
                    try:
                        meta = peek_speech_meta(payload, expected_rate=None)
                    except BadRecord as e:
                        bad.append({"reason": e.reason, "index": start + i, "detail": e.detail})
                        continue
                    durations.append(meta.audio_len / meta.sample_rate)
                    sources.append(meta.dataset_name)
                    record_bytes.append(len(payload))
        finally:
            reader.close()
        rel = shard.relative_to(root)
        splits.setdefault(rel.parent.as_posix(), []).append(
            {
                "durations": durations,
                "sources": sources,
                "record_bytes": record_bytes,
                "bad": bad,
                "shard": {"path": rel.as_posix(), "records": len(durations), "unreadable": len(bad)},
            }
        )
    return build_manifest(splits, {"scanned": str(root)})


def main(args: argparse.Namespace) -> int:
    """Prints the report for the parsed ``sawt data inspect`` arguments."""
    path = Path(args.path)
    if path.is_dir():
        manifest_path = path / "manifest.json"
        if manifest_path.exists() and not getattr(args, "scan", False):
            manifest = load_manifest(manifest_path)
        else:
            manifest = scan_directory(path)
    elif path.is_file():
        manifest = load_manifest(path)
    else:
        raise FileNotFoundError(f"{path}: no such directory or manifest")
    if getattr(args, "json", False):
        print(json.dumps(manifest, indent=2, ensure_ascii=False))
    else:
        print(format_report(manifest))
    return 0
