"""The data-set manifest: per-split, per-source statistics of a converted corpus, and its text report.

`sawt data convert` writes ``DST/manifest.json`` with `build_manifest`; `sawt data inspect` prints it with
`format_report` (or rebuilds the same statistics by reading an ArrayRecord directory that has none).

Layout of manifest.json (all durations in seconds):

    {
      "format": "sawt-arrayrecord-v1",
      "histogram_edges_s": [0, 1, 2, ...],   # bin i counts durations in [edges[i], edges[i+1]); the last
                                               # bin is open-ended: [edges[-1], inf)
      "totals": STATS,
      "skipped": {reason: count, ...},         # every reason listed, zeros included
      "splits": {
        "train": {**STATS, "skipped": {...}, "shards": [{"path", "source", "records", ...}],
                  "sources": {dataset_name: STATS}},
        ...
      }
    }
    STATS = {"records", "hours", "bytes", "duration_s": {"min", "median", "max"}, "histogram": [counts]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MANIFEST_FORMAT = "sawt-arrayrecord-v1"

# Fixed bins so histograms from different runs and splits line up; finer where ASR clips usually are,
# with 30 s (Whisper's window) and 40 s as landmarks.
HISTOGRAM_EDGES_S = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 60)

# Every reason a record can be skipped: Example-level (trainer.data.example.BAD_RECORD_REASONS) and
# TFRecord-level (trainer.data.tfrecord.TFRECORD_REASONS).
SKIP_REASONS = (
    "bad_data_crc",
    "bad_length_crc",
    "truncated",
    "undecodable",
    "missing_feature",
    "audio_len_mismatch",
    "non_finite_audio",
    "wrong_sample_rate",
)


def histogram(durations_s: np.ndarray) -> list[int]:
    """Counts of ``durations_s`` in the fixed bins of HISTOGRAM_EDGES_S (last bin open-ended)."""
    edges = np.asarray(HISTOGRAM_EDGES_S, dtype=np.float64)
    idx = np.searchsorted(edges, np.asarray(durations_s, dtype=np.float64), side="right") - 1
    return np.bincount(np.clip(idx, 0, len(edges) - 1), minlength=len(edges)).tolist()


def stats(durations_s: np.ndarray, nbytes: int) -> dict[str, Any]:
    """Records, hours, bytes, min/median/max duration and the histogram of one group of records."""
    d = np.asarray(durations_s, dtype=np.float64)
    if d.size:
        dur = {"min": float(d.min()), "median": float(np.median(d)), "max": float(d.max())}
    else:
        dur = {"min": None, "median": None, "max": None}
    return {
        "records": int(d.size),
        "hours": float(d.sum() / 3600.0),
        "bytes": int(nbytes),
        "duration_s": dur,
        "histogram": histogram(d),
    }


def count_reasons(reasons: Iterable[str]) -> dict[str, int]:
    """reason -> count with every known reason present (zeros included), unknown ones appended."""
    counts = dict.fromkeys(SKIP_REASONS, 0)
    for r in reasons:
        counts[r] = counts.get(r, 0) + 1
    return counts


def build_manifest(
    splits: Mapping[str, Sequence[Mapping[str, Any]]], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Aggregates per-shard results into the manifest.

    Args:
        splits: split name -> shard results, each with ``durations`` (seconds per good record),
            ``sources`` (dataset_name per good record), ``record_bytes`` (payload bytes per good record),
            ``bad`` (list of {"reason": ...}) and ``shard`` (a summary dict copied into the manifest).
        extra: more top-level keys (e.g. source directory, writer options).

    Returns:
        The manifest dict (see the module docstring).
    """
    all_d, all_b, all_bad = [], [], []
    out_splits: dict[str, Any] = {}
    for split in sorted(splits):
        shards = splits[split]
        d = (
            np.concatenate([np.asarray(s["durations"], np.float64) for s in shards])
            if shards
            else np.zeros(0)
        )
        b = (
            np.concatenate([np.asarray(s["record_bytes"], np.int64) for s in shards])
            if shards
            else np.zeros(0)
        )
        src = [name for s in shards for name in s["sources"]]
        bad = [x["reason"] for s in shards for x in s["bad"]]
        per_source = {}
        src_arr = np.asarray(src, dtype=object)
        for name in sorted(set(src)):
            mask = src_arr == name
            per_source[name] = stats(d[mask], int(b[mask].sum()))
        out_splits[split] = {
            **stats(d, int(b.sum())),
            "skipped": count_reasons(bad),
            "sources": per_source,
            "shards": [s["shard"] for s in shards],
        }
        all_d.append(d)
        all_b.append(b)
        all_bad.extend(bad)
    d = np.concatenate(all_d) if all_d else np.zeros(0)
    b = np.concatenate(all_b) if all_b else np.zeros(0, np.int64)
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT}
    manifest.update(extra or {})
    manifest["histogram_edges_s"] = list(HISTOGRAM_EDGES_S)
    manifest["totals"] = stats(d, int(b.sum()))
    manifest["skipped"] = count_reasons(all_bad)
    manifest["splits"] = out_splits
    return manifest


def _fmt_dur(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _bin_label(i: int) -> str:
    lo = HISTOGRAM_EDGES_S[i]
    return f"{lo}-{HISTOGRAM_EDGES_S[i + 1]} s" if i + 1 < len(HISTOGRAM_EDGES_S) else f">= {lo} s"


def _histogram_lines(counts: Sequence[int], indent: str, width: int = 40) -> list[str]:
    if not any(counts):
        return []
    last = max(i for i, c in enumerate(counts) if c)
    top = max(counts)
    lines = []
    for i in range(last + 1):
        bar = "#" * (round(width * counts[i] / top) if counts[i] else 0)
        lines.append(f"{indent}{_bin_label(i):>10} {counts[i]:>9,d} {bar}")
    return lines


def _row(name: str, s: Mapping[str, Any]) -> str:
    d = s["duration_s"]
    return (
        f"{name:<28} {s['records']:>10,d} {s['hours']:>10.3f} {s['bytes'] / 1e6:>11.1f} "
        f"{_fmt_dur(d['min']):>7} {_fmt_dur(d['median']):>7} {_fmt_dur(d['max']):>7}"
    )


def format_report(manifest: Mapping[str, Any], *, histograms: bool = True) -> str:
    """A human-readable report: a table per split and source, skipped records, duration histograms."""
    header = f"{'split / source':<28} {'records':>10} {'hours':>10} {'MB':>11} {'min s':>7} {'med s':>7} {'max s':>7}"
    lines = [header, "-" * len(header)]
    for split, s in manifest["splits"].items():
        lines.append(_row(split, s))
        for source, ss in s["sources"].items():
            lines.append(_row(f"  {source}", ss))
    lines.append("-" * len(header))
    lines.append(_row("total", manifest["totals"]))
    skipped = {k: v for k, v in manifest.get("skipped", {}).items() if v}
    lines.append("")
    if skipped:
        lines.append(
            f"skipped records: {sum(skipped.values())} ("
            + ", ".join(f"{k}: {v}" for k, v in skipped.items())
            + ")"
        )
    else:
        lines.append("skipped records: 0")
    if histograms:
        for split, s in manifest["splits"].items():
            lines.append("")
            lines.append(f"duration histogram: {split}")
            lines.extend(_histogram_lines(s["histogram"], "  "))
            if len(s["sources"]) > 1:
                for source, ss in s["sources"].items():
                    lines.append(f"  {source}:")
                    lines.extend(_histogram_lines(ss["histogram"], "    "))
    return "\n".join(lines)
