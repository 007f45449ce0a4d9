"""`sawt data inspect`: from a converted directory, its manifest, or a scan of the records themselves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sawt.cli import main as sawt
from tools.data.manifest import HISTOGRAM_EDGES_S, histogram, stats
from trainer.data.example import encode_speech
from trainer.data.tfrecord import TFRecordWriter


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    rng = np.random.default_rng(1)
    # Durations chosen to land in known histogram bins: 0.5 s, 1.5 s x2, 2.5 s (train); 4.5 s (test).
    plan = {
        "train": [(8000, "alpha"), (24000, "alpha"), (24000, "beta"), (40000, "beta")],
        "test": [(72000, "alpha")],
    }
    for split, clips in plan.items():
        with TFRecordWriter(root / "src" / split / "s.tfrecord") as w:
            for i, (n, source) in enumerate(clips):
                w.write(
                    encode_speech(
                        rng.standard_normal(n).astype(np.float32) * 0.1, "نص", source, f"{split}{i}"
                    )
                )
    assert (
        sawt(["data", "convert", "--src", str(root / "src"), "--dst", str(root / "dst"), "--workers", "1"])
        == 0
    )
    return root / "dst"


def test_inspect_directory_prints_counts_hours_and_histograms(converted, capsys):
    capsys.readouterr()
    assert sawt(["data", "inspect", str(converted)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    train = next(line for line in lines if line.startswith("train "))
    assert train.split()[1:3] == ["4", f"{(0.5 + 1.5 + 1.5 + 2.5) / 3600:.3f}"]
    assert any(line.split()[:2] == ["alpha", "2"] for line in lines)
    assert any(line.split()[:2] == ["beta", "2"] for line in lines)
    assert "duration histogram: train" in out and "duration histogram: test" in out
    after = lines[lines.index("duration histogram: train") :]
    hist = [line.split() for line in after if line.strip().startswith("1-2 s")]
    assert hist[0][2] == "2"  # the two 1.5 s clips of train
    assert "skipped records: 0" in out


def test_inspect_manifest_file_and_scan_agree(converted, capsys):
    capsys.readouterr()
    assert sawt(["data", "inspect", "--json", str(converted / "manifest.json")]) == 0
    from_manifest = json.loads(capsys.readouterr().out)
    assert sawt(["data", "inspect", "--json", "--scan", str(converted)]) == 0
    scanned = json.loads(capsys.readouterr().out)
    for split in ("train", "test"):
        a, b = from_manifest["splits"][split], scanned["splits"][split]
        for key in ("records", "hours", "bytes", "duration_s", "histogram"):
            assert a[key] == b[key], (split, key)
        assert {k: v["records"] for k, v in a["sources"].items()} == {
            k: v["records"] for k, v in b["sources"].items()
        }


def test_inspect_without_manifest_scans(converted, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(converted, copy)
    (copy / "manifest.json").unlink()
    capsys.readouterr()
    assert sawt(["data", "inspect", str(copy)]) == 0
    assert any(
        line.startswith("total ") and line.split()[1] == "5" for line in capsys.readouterr().out.splitlines()
    )


def test_inspect_bad_inputs(tmp_path, capsys):
    assert sawt(["data", "inspect", str(tmp_path / "nope")]) == 2
    (tmp_path / "x.json").write_text('{"hello": 1}')
    assert sawt(["data", "inspect", str(tmp_path / "x.json")]) == 2
    assert "not a sawt manifest" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert sawt(["data", "inspect", str(tmp_path / "empty")]) == 2
    assert "no *.array_record" in capsys.readouterr().err


def test_histogram_bins_and_stats():
    d = np.array([0.0, 0.99, 1.0, 29.9, 30.0, 59.0, 61.0, 1000.0])
    h = histogram(d)
    assert len(h) == len(HISTOGRAM_EDGES_S) and sum(h) == d.size
    assert h[0] == 2 and h[1] == 1 and h[HISTOGRAM_EDGES_S.index(25)] == 1
    assert h[HISTOGRAM_EDGES_S.index(30)] == 1 and h[HISTOGRAM_EDGES_S.index(40)] == 1 and h[-1] == 2
    s = stats(d, 123)
    assert s["records"] == 8 and s["bytes"] == 123 and s["hours"] == pytest.approx(d.sum() / 3600)
    assert s["duration_s"] == {"min": 0.0, "median": pytest.approx(np.median(d)), "max": 1000.0}
