"""`sawt data convert`: layout, byte-identical records, planted corruption of every kind, resume, manifest.

Runs the real CLI on tiny TFRecord shards made in tmp_path with encode_speech + TFRecordWriter, and reads
the outputs back with the real ArrayRecord reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader
from helpers.records import write_tfrecord

from core.fileio import read_jsonl
from sawt.cli import main as sawt
from tools.data.manifest import SKIP_REASONS
from trainer.data.example import encode_example, encode_speech
from trainer.data.tfrecord import iter_tfrecord

RNG = np.random.default_rng(0)


def _clip(n: int, source: str, sid: str) -> bytes:
    return encode_speech((0.1 * RNG.standard_normal(n)).astype(np.float32), f"نص {sid}", source, sid)


def _speech_features(**overrides) -> bytes:
    n = 480
    feats = {
        "audio": np.zeros(n, np.float32),
        "audio_len": n,
        "sample_rate": 16000,
        "duration": n / 16000,
        "text": "t",
        "dataset_name": "bad",
        "sample_id": "bad-1",
    }
    feats.update(overrides)
    return encode_example({k: v for k, v in feats.items() if v is not None})


def _flip(path: Path, pos: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[pos] ^= 0x40
    path.write_bytes(bytes(raw))


def _read_array_record(path: Path) -> list[bytes]:
    reader = ArrayRecordReader(str(path))
    try:
        return list(reader.read_all())
    finally:
        reader.close()


def _convert(src, dst, *extra: str) -> int:
    return sawt(["data", "convert", "--src", str(src), "--dst", str(dst), "--workers", "1", *extra])


@pytest.fixture
def clean_src(tmp_path):
    """train/ with two shards (sources a and b), validation/ with one: 12 good records in all."""
    src = tmp_path / "src"
    lengths = {
        "train": [[1600, 8000, 4800, 16000], [3200, 24000, 800, 12000]],
        "validation": [[4000, 2000, 6000, 9600]],
    }
    payloads = {}
    for split, shards in lengths.items():
        for k, ns in enumerate(shards):
            recs = [_clip(n, "a" if i % 2 else "b", f"{split}-{k}-{i}") for i, n in enumerate(ns)]
            write_tfrecord(src / split / f"part-{k:05d}-of-{len(shards):05d}.tfrecord", recs)
            payloads[f"{split}/part-{k:05d}-of-{len(shards):05d}"] = recs
    return src, payloads


def test_layout_byte_identity_manifest_and_index(clean_src, tmp_path):
    src, payloads = clean_src
    dst = tmp_path / "dst"
    assert _convert(src, dst) == 0
    for stem, recs in payloads.items():
        out = dst / f"{stem}.array_record"
        assert _read_array_record(out) == recs  # serialized Examples pass through unchanged
        reader = ArrayRecordReader(str(out))
        options = reader.writer_options_string()
        reader.close()
        assert "group_size:1," in options and "uncompressed" in options
    assert not list(dst.rglob("*.tmp"))

    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["skipped"] == dict.fromkeys(SKIP_REASONS, 0)
    train = manifest["splits"]["train"]
    durations = np.array([1600, 8000, 4800, 16000, 3200, 24000, 800, 12000]) / 16000
    assert train["records"] == 8
    assert train["hours"] == pytest.approx(durations.sum() / 3600)
    assert train["duration_s"] == {"min": 0.05, "median": pytest.approx(np.median(durations)), "max": 1.5}
    assert train["bytes"] == sum(len(p) for k, v in payloads.items() if k.startswith("train") for p in v)
    assert sum(train["histogram"]) == 8 and train["histogram"][:2] == [6, 2]
    assert set(train["sources"]) == {"a", "b"}
    a = np.array([8000, 16000, 24000, 12000]) / 16000
    assert train["sources"]["a"]["records"] == 4
    assert train["sources"]["a"]["duration_s"]["median"] == pytest.approx(np.median(a))
    assert manifest["totals"]["records"] == 12
    assert manifest["writer_options"] == "group_size:1,uncompressed"
    assert (dst / "quarantine.jsonl").read_text() == ""

    index = np.load(dst / "train" / "index.npz")
    assert index["duration"].dtype == np.float32 and index["source_id"].dtype == np.int32
    assert np.allclose(index["duration"], durations)  # shard order by file name, then record order
    assert list(index["sources"][index["source_id"]]) == ["b", "a"] * 4
    assert index["shards"].tolist() == [
        "part-00000-of-00002.array_record",
        "part-00001-of-00002.array_record",
    ]
    assert index["shard_records"].tolist() == [4, 4]
    # The transcripts, UTF-8 end to end, for the packed plan (what read_index decodes).
    from trainer.data.loader import read_index

    expected = [f"نص train-{k}-{i}" for k in range(2) for i in range(4)]
    assert index["text_offsets"].tolist() == np.cumsum([0] + [len(t.encode()) for t in expected]).tolist()
    assert read_index(dst, "train").texts == tuple(expected)
    assert np.load(dst / "validation" / "index.npz")["duration"].size == 4


def test_every_kind_of_corruption_is_counted_and_quarantined(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    good = [_clip(1600 + 160 * i, "a", f"g{i}") for i in range(8)]
    bad_records = {
        "undecodable": b"\x0a\x05\x0a",
        "missing_feature": _speech_features(text=None),
        "audio_len_mismatch": _speech_features(audio_len=481),
        "non_finite_audio": _speech_features(audio=np.full(480, np.nan, np.float32)),
        "wrong_sample_rate": _speech_features(sample_rate=22050),
    }
    inf_audio = _speech_features(audio=np.r_[np.zeros(479, np.float32), np.float32(-np.inf)])
    # Shard 0: good and bad records interleaved, plus one good record whose payload CRC we break.
    shard0 = [good[0], *bad_records.values(), good[1], inf_audio, good[2], good[3]]
    p0 = src / "train" / "s-00000.tfrecord"
    off0 = write_tfrecord(p0, shard0)
    crc_victim = 8  # good[2]
    _flip(p0, off0[crc_victim] + 12 + 40)
    # Shard 1: a bad length CRC on its third record loses the rest of the shard.
    p1 = src / "train" / "s-00001.tfrecord"
    off1 = write_tfrecord(p1, [good[4], good[5], good[6], good[7]])
    _flip(p1, off1[2] + 1)
    # Shard 2: truncated inside its second record.
    p2 = src / "validation" / "s-00000.tfrecord"
    off2 = write_tfrecord(p2, [good[0], good[1]])
    p2.write_bytes(p2.read_bytes()[: off2[1] + 30])

    assert _convert(src, dst) == 0
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["skipped"] == {
        "bad_data_crc": 1,
        "bad_length_crc": 1,
        "truncated": 1,
        "undecodable": 1,
        "missing_feature": 1,
        "audio_len_mismatch": 1,
        "non_finite_audio": 2,
        "wrong_sample_rate": 1,
    }
    assert manifest["splits"]["train"]["records"] == 3 + 2  # good[0,1,3] + good[4,5]
    assert manifest["splits"]["validation"]["records"] == 1
    assert _read_array_record(dst / "train" / "s-00000.array_record") == [good[0], good[1], good[3]]
    assert _read_array_record(dst / "train" / "s-00001.array_record") == [good[4], good[5]]
    assert _read_array_record(dst / "validation" / "s-00000.array_record") == [good[0]]

    # Nothing is dropped without being counted: every located record is converted or skipped.
    shard0_summary = manifest["splits"]["train"]["shards"][0]
    assert (
        shard0_summary["source_records"]
        == len(shard0)
        == shard0_summary["records"] + shard0_summary["skipped"]
    )

    entries = list(read_jsonl(dst / "quarantine.jsonl"))
    where = {(e["shard"], e["offset"]): e["reason"] for e in entries}
    assert where == {
        ("train/s-00000.tfrecord", off0[1]): "undecodable",
        ("train/s-00000.tfrecord", off0[2]): "missing_feature",
        ("train/s-00000.tfrecord", off0[3]): "audio_len_mismatch",
        ("train/s-00000.tfrecord", off0[4]): "non_finite_audio",
        ("train/s-00000.tfrecord", off0[5]): "wrong_sample_rate",
        ("train/s-00000.tfrecord", off0[7]): "non_finite_audio",
        ("train/s-00000.tfrecord", off0[crc_victim]): "bad_data_crc",
        ("train/s-00001.tfrecord", off1[2]): "bad_length_crc",
        ("validation/s-00000.tfrecord", off2[1]): "truncated",
    }
    lost = next(e for e in entries if e["reason"] == "bad_length_crc")
    assert "bytes to the end of the file" in lost["detail"] and "quarantine_file" not in lost
    # The bad records' bytes are kept, in order, in a quarantine TFRecord per shard.
    q0 = [e for e in entries if e["shard"] == "train/s-00000.tfrecord"]
    kept = [p for _, p in iter_tfrecord(dst / q0[0]["quarantine_file"])]
    assert [e["quarantine_index"] for e in q0] == list(range(7))
    assert kept[:5] == list(bad_records.values()) and kept[5] == inf_audio
    assert kept[6] != good[2] and len(kept[6]) == len(good[2])  # the payload whose CRC failed, as read
    assert next(e for e in q0 if e["reason"] == "wrong_sample_rate")["sample_id"] == "bad-1"

    # The index only lists converted records.
    assert np.load(dst / "train" / "index.npz")["duration"].size == 5
    # The report shows the skipped records.
    assert "9 bad records quarantined" in capsys.readouterr().out


def test_on_error_fail_stops_naming_file_offset_and_reason(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    offsets = write_tfrecord(
        src / "train" / "x.tfrecord", [_clip(800, "a", "1"), _speech_features(sample_rate=8000)]
    )
    assert _convert(src, dst, "--on-error", "fail") == 1
    err = capsys.readouterr().err
    assert str(src / "train" / "x.tfrecord") in err
    assert f"byte offset {offsets[1]}" in err and "wrong_sample_rate" in err
    assert not (dst / "train" / "x.array_record").exists()
    assert not list(dst.rglob("*.tmp")) and not (dst / "manifest.json").exists()


def test_on_error_fail_on_a_crc_error(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    path = src / "x.tfrecord"
    offsets = write_tfrecord(path, [_clip(800, "a", "1"), _clip(800, "a", "2")])
    _flip(path, offsets[1] + 3)
    assert _convert(src, dst, "--on-error", "fail") == 1
    err = capsys.readouterr().err
    assert f"{path}: byte offset {offsets[1]}: bad record (bad_length_crc)" in err


def _mtimes(dst: Path) -> dict[str, int]:
    return {p.relative_to(dst).as_posix(): p.stat().st_mtime_ns for p in dst.rglob("*.array_record")}


def test_resume_skips_finished_shards_and_redoes_the_rest(clean_src, tmp_path, capsys):
    src, payloads = clean_src
    dst = tmp_path / "dst"
    assert _convert(src, dst) == 0
    first = _mtimes(dst)
    manifest1 = json.loads((dst / "manifest.json").read_text())
    capsys.readouterr()

    assert _convert(src, dst) == 0
    assert "(3 already done)" in capsys.readouterr().out
    assert _mtimes(dst) == first
    assert json.loads((dst / "manifest.json").read_text()) == manifest1

    # A deleted output, a truncated output and a changed source are redone; the untouched shard is not.
    (dst / "train" / "part-00000-of-00002.array_record").unlink()
    victim = dst / "train" / "part-00001-of-00002.array_record"
    victim.write_bytes(victim.read_bytes()[:100])
    extra = _clip(1600, "c", "new")
    write_tfrecord(
        src / "validation" / "part-00000-of-00001.tfrecord",
        [*payloads["validation/part-00000-of-00001"], extra],
    )
    assert _convert(src, dst) == 0
    assert "(0 already done)" in capsys.readouterr().out
    assert _read_array_record(victim) == payloads["train/part-00001-of-00002"]
    assert _read_array_record(dst / "validation" / "part-00000-of-00001.array_record")[-1] == extra
    manifest3 = json.loads((dst / "manifest.json").read_text())
    assert manifest3["splits"]["validation"]["records"] == 5
    assert set(manifest3["splits"]["validation"]["sources"]) == {"a", "b", "c"}


def test_crash_mid_shard_leaves_no_finished_looking_output(clean_src, tmp_path, monkeypatch):
    import trainer.data.example as example

    src, payloads = clean_src
    dst = tmp_path / "dst"
    real = example.decode_speech
    calls = {"n": 0}

    def crashing(data, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # inside the second shard
            raise KeyboardInterrupt
        return real(data, **kw)

    monkeypatch.setattr(example, "decode_speech", crashing)
    assert _convert(src, dst) == 130
    monkeypatch.setattr(example, "decode_speech", real)
    assert (dst / "train" / "part-00000-of-00002.array_record").exists()
    assert not (dst / "train" / "part-00001-of-00002.array_record").exists()
    assert not list(dst.rglob("*.tmp")) and not (dst / "manifest.json").exists()
    # A stale temporary from a harder crash (a killed process) is ignored and replaced.
    (dst / "train" / ".part-00001-of-00002.array_record.tmp").write_bytes(b"garbage")
    assert _convert(src, dst) == 0
    for stem, recs in payloads.items():
        assert _read_array_record(dst / f"{stem}.array_record") == recs
    assert not list(dst.rglob("*.tmp"))


def test_parallel_workers_match_serial(clean_src, tmp_path, monkeypatch):
    import concurrent.futures as cf

    from tools.data import convert

    src, _ = clean_src
    assert _convert(src, tmp_path / "serial") == 0
    pools = []

    class RecordingPool(cf.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(kwargs["max_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(convert.cf, "ProcessPoolExecutor", RecordingPool)
    # Small shards normally convert in-process (a worker costs more to start); force real workers here.
    monkeypatch.setattr(convert, "PARALLEL_MIN_BYTES", 1)
    assert sawt(["data", "convert", "--src", str(src), "--dst", str(tmp_path / "par"), "--workers", "2"]) == 0
    assert pools == [2]
    a = json.loads((tmp_path / "serial" / "manifest.json").read_text())
    b = json.loads((tmp_path / "par" / "manifest.json").read_text())
    assert a["splits"] == b["splits"]
    for p in (tmp_path / "serial").rglob("*.array_record"):
        assert p.read_bytes() == (tmp_path / "par" / p.relative_to(tmp_path / "serial")).read_bytes()


def test_glob_source_and_root_level_shard(clean_src, tmp_path):
    src, payloads = clean_src
    dst = tmp_path / "dst"
    assert _convert(f"{src}/*/part-00000-*.tfrecord", dst) == 0
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.array_record")) == [
        "train/part-00000-of-00002.array_record",
        "validation/part-00000-of-00001.array_record",
    ]
    flat = tmp_path / "flat"
    write_tfrecord(flat / "all.tfrecord-00000-of-00001", payloads["train/part-00000-of-00002"])
    assert _convert(flat, tmp_path / "dst2") == 0
    assert (
        _read_array_record(tmp_path / "dst2" / "all-00000-of-00001.array_record")
        == payloads["train/part-00000-of-00002"]
    )
    assert np.load(tmp_path / "dst2" / "index.npz")["duration"].size == 4
    assert "." in json.loads((tmp_path / "dst2" / "manifest.json").read_text())["splits"]


def test_stale_outputs_are_reported(clean_src, tmp_path, capsys):
    src, _ = clean_src
    dst = tmp_path / "dst"
    (dst / "train").mkdir(parents=True)
    (dst / "train" / "old-shard.array_record").write_bytes(b"")
    assert _convert(src, dst) == 0
    err = capsys.readouterr().err
    assert "1 ArrayRecord file(s)" in err and "train/old-shard.array_record" in err
    assert (dst / "train" / "old-shard.array_record").exists()  # reported, never deleted


def test_compression_option(clean_src, tmp_path):
    src, payloads = clean_src
    assert _convert(src, tmp_path / "z", "--compression", "zstd") == 0
    out = tmp_path / "z" / "train" / "part-00000-of-00002.array_record"
    reader = ArrayRecordReader(str(out))
    assert "zstd" in reader.writer_options_string() and "group_size:1," in reader.writer_options_string()
    reader.close()
    assert _read_array_record(out) == payloads["train/part-00000-of-00002"]


def test_bad_usage_is_a_one_line_error(tmp_path, capsys):
    assert _convert(tmp_path / "missing", tmp_path / "dst") == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _convert(tmp_path / "empty", tmp_path / "dst") == 2
    assert "no TFRecord shards" in capsys.readouterr().err
    dup = tmp_path / "dup"
    write_tfrecord(dup / "x.tfrecord", [])
    write_tfrecord(dup / "x.tfrecord.gz", [])
    assert _convert(dup, tmp_path / "dst") == 2
    assert "would both be written" in capsys.readouterr().err


def test_empty_shard(tmp_path):
    write_tfrecord(tmp_path / "src" / "train" / "e.tfrecord", [])
    assert _convert(tmp_path / "src", tmp_path / "dst") == 0
    assert _read_array_record(tmp_path / "dst" / "train" / "e.array_record") == []
    m = json.loads((tmp_path / "dst" / "manifest.json").read_text())
    assert m["splits"]["train"]["records"] == 0 and m["splits"]["train"]["duration_s"]["min"] is None


def test_single_file_source_and_dst_inside_src(tmp_path):
    src = tmp_path / "src"
    payloads = [_clip(800, "a", "1"), b"not an example"]
    write_tfrecord(src / "one.tfrecord", payloads)
    assert _convert(src / "one.tfrecord", tmp_path / "single") == 0
    assert _read_array_record(tmp_path / "single" / "one.array_record") == payloads[:1]
    # DST inside SRC: its quarantine TFRecords must never be taken for sources on a re-run.
    dst = src / "converted"
    assert _convert(src, dst) == 0
    assert (dst / "quarantine" / "one.tfrecord").exists()
    assert _convert(src, dst) == 0
    manifest = json.loads((dst / "manifest.json").read_text())
    assert [s["source"] for split in manifest["splits"].values() for s in split["shards"]] == ["one.tfrecord"]


# ------------------------------------------------------------------ --num-shards/--shard-index (Indexed Job)


@pytest.fixture
def sharded_src(clean_src):
    """clean_src plus a fourth shard holding one good and one bad record (so the quarantine is not empty)."""
    src, payloads = clean_src
    recs = [_clip(2400, "c", "extra-0"), b"not an example"]
    write_tfrecord(src / "train" / "zz-extra.tfrecord", recs)
    return src, {**payloads, "train/zz-extra": recs}


def _assert_same_outputs(a: Path, b: Path) -> None:
    """Two conversions of one source wrote the same manifest, quarantine, indexes and records."""
    assert json.loads((a / "manifest.json").read_text()) == json.loads((b / "manifest.json").read_text())
    assert (a / "quarantine.jsonl").read_text() == (b / "quarantine.jsonl").read_text()
    assert (a / "quarantine.jsonl").read_text() != ""
    indexes = sorted(p.relative_to(a) for p in a.rglob("index.npz"))
    assert indexes == sorted(p.relative_to(b) for p in b.rglob("index.npz")) and len(indexes) == 2
    for rel in indexes:
        ia, ib = np.load(a / rel), np.load(b / rel)
        assert sorted(ia.files) == sorted(ib.files)
        for key in ia.files:
            assert np.array_equal(ia[key], ib[key]), (rel, key)
    records = sorted(p.relative_to(a) for p in a.rglob("*.array_record"))
    assert records == sorted(p.relative_to(b) for p in b.rglob("*.array_record")) and len(records) == 4
    for rel in records:
        assert _read_array_record(a / rel) == _read_array_record(b / rel)
    quarantined = sorted(p.relative_to(a) for p in (a / "quarantine").rglob("*.tfrecord"))
    assert quarantined == [Path("quarantine/train/zz-extra.tfrecord")]
    assert list(iter_tfrecord(a / quarantined[0])) == list(iter_tfrecord(b / quarantined[0]))


def test_shard_index_pods_in_sequence_match_one_plain_run(sharded_src, tmp_path, capsys):
    src, _ = sharded_src
    assert _convert(src, tmp_path / "plain") == 0
    dst = tmp_path / "pods"
    capsys.readouterr()

    # Sorted sources: train/part-0, train/part-1, train/zz-extra, validation/part-0; pod i takes i % 3.
    assert _convert(src, dst, "--num-shards", "3", "--shard-index", "1") == 0
    out = capsys.readouterr().out
    assert "3 of 4 source shards still pending" in out and "train/part-00000-of-00002.tfrecord" in out
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.array_record")) == [
        "train/part-00001-of-00002.array_record"
    ]
    assert not (dst / "manifest.json").exists() and not list(dst.rglob("index.npz"))

    assert _convert(src, dst, "--num-shards", "3", "--shard-index", "0") == 0
    out = capsys.readouterr().out
    assert "1 of 4 source shards still pending" in out and "train/zz-extra.tfrecord" in out
    assert not (dst / "manifest.json").exists()

    assert _convert(src, dst, "--num-shards", "3", "--shard-index", "2") == 0
    assert "every source shard is finished" in capsys.readouterr().out
    _assert_same_outputs(tmp_path / "plain", dst)

    # Finalising again (a retried pod) changes nothing: it is derived from the sidecars alone.
    before = _mtimes(dst)
    assert _convert(src, dst, "--num-shards", "3", "--shard-index", "0") == 0
    assert _mtimes(dst) == before
    _assert_same_outputs(tmp_path / "plain", dst)


def test_shard_index_pods_running_concurrently_match_one_plain_run(sharded_src, tmp_path):
    """Two real `sawt data convert` processes at once on one DST, as two pods of the Indexed Job."""
    import subprocess
    import sys

    src, _ = sharded_src
    assert _convert(src, tmp_path / "plain") == 0
    dst = tmp_path / "pods"
    argv = [sys.executable, "-m", "sawt.cli", "data", "convert", "--src", str(src), "--dst", str(dst)]
    procs = [
        subprocess.Popen(
            [*argv, "--workers", "1", "--num-shards", "2", "--shard-index", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # Each writes its sidecars before looking at the other's, so at least the later one finalises.
    assert any("every source shard is finished" in out for out in outs), outs
    _assert_same_outputs(tmp_path / "plain", dst)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-shards", "3", "--shard-index", "3"], "--shard-index 3: must be in [0, 3)"),
        (["--num-shards", "3", "--shard-index", "-1"], "--shard-index -1: must be in [0, 3)"),
        (["--num-shards", "0"], "--num-shards 0: must be at least 1"),
    ],
)
def test_shard_index_out_of_range_is_a_usage_error(clean_src, tmp_path, capsys, flags, message):
    src, _ = clean_src
    assert _convert(src, tmp_path / "dst", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()  # rejected before anything is written
