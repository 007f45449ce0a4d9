"""TFRecord reader/writer: TensorFlow goldens byte for byte, CRC32C, and errors naming file and offset."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from helpers.records import write_tfrecord
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.data.tfrecord import (
    TFRecordError,
    TFRecordWriter,
    count_tfrecord,
    crc32c,
    crc32c_python,
    encode_record,
    iter_tfrecord,
    masked_crc32c,
    scan_tfrecord,
)

GOLDENS = Path(__file__).resolve().parents[1] / "goldens" / "data"


def _golden_payloads() -> list[bytes]:
    # What tools/dev/make_tf_goldens.py wrote with tf.io.TFRecordWriter, in order.
    return [
        (GOLDENS / "speech.det.pb").read_bytes(),
        b"",
        (GOLDENS / "all_kinds.det.pb").read_bytes(),
        b"x" * 300,
    ]


# ---------------------------------------------------------------------------------------- CRC32C


def test_crc32c_known_vectors():
    # RFC 3720 / iSCSI check values.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(b"\x00" * 32) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c_python(b"123456789") == 0xE3069283


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_c_and_python_crc_agree(data):
    assert crc32c(data) == crc32c_python(data)


def test_masked_crc_of_tensorflow_header():
    # The first header of TF's golden file: length, then TF's masked CRC of those 8 bytes.
    raw = (GOLDENS / "records.tfrecord").read_bytes()
    (stored,) = struct.unpack_from("<I", raw, 8)
    assert masked_crc32c(raw[:8]) == stored


# ---------------------------------------------------------------------------- TensorFlow goldens


def test_reads_tensorflow_file():
    records = list(iter_tfrecord(GOLDENS / "records.tfrecord"))
    assert [p for _, p in records] == _golden_payloads()
    assert [o for o, _ in records] == [
        0,
        16 + len(records[0][1]),
        32 + len(records[0][1]),
        48 + len(records[0][1]) + len(records[2][1]),
    ]


def test_reads_tensorflow_gzip_file():
    assert [p for _, p in iter_tfrecord(GOLDENS / "records.tfrecord.gz")] == _golden_payloads()
    assert count_tfrecord(GOLDENS / "records.tfrecord.gz") == 4


def test_writes_tensorflow_bytes_exactly(tmp_path):
    write_tfrecord(tmp_path / "ours.tfrecord", _golden_payloads())
    assert (tmp_path / "ours.tfrecord").read_bytes() == (GOLDENS / "records.tfrecord").read_bytes()


def test_gzip_writer_round_trip(tmp_path):
    path = tmp_path / "x.tfrecord.gz"
    with TFRecordWriter(path, gzip_level=6) as w:
        for p in _golden_payloads():
            w.write(p)
    assert gzip.decompress(path.read_bytes()) == (GOLDENS / "records.tfrecord").read_bytes()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_round_trip(tmp_path_factory, payloads):
    path = tmp_path_factory.mktemp("rt") / "x.tfrecord"
    offsets = write_tfrecord(path, payloads)
    assert list(iter_tfrecord(path)) == list(zip(offsets, payloads, strict=True))
    assert count_tfrecord(path) == len(payloads)
    assert path.read_bytes() == b"".join(encode_record(p) for p in payloads)


# ---------------------------------------------------------------------------------------- errors


@pytest.fixture
def three(tmp_path):
    path = tmp_path / "shard.tfrecord"
    payloads = [b"a" * 10, b"b" * 20, b"c" * 30]
    return path, payloads, write_tfrecord(path, payloads)


def _corrupt(path: Path, pos: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))


def _expect_error(path: Path, reason: str, offset: int) -> TFRecordError:
    with pytest.raises(TFRecordError) as info:
        list(iter_tfrecord(path))
    err = info.value
    assert (err.reason, err.offset, err.path) == (reason, offset, str(path))
    assert str(path) in str(err) and f"byte offset {offset}" in str(err)
    return err


def test_bad_length_crc_names_file_and_offset(three):
    path, _, offsets = three
    _corrupt(path, offsets[1] + 2)  # a bit of the second record's length field
    _expect_error(path, "bad_length_crc", offsets[1])
    entries = list(scan_tfrecord(path))
    assert [e.payload for e in entries[:1]] == [b"a" * 10]
    assert entries[1].error.reason == "bad_length_crc" and not entries[1].error.recoverable
    assert len(entries) == 2  # nothing after a bad length can be located
    assert "bytes to the end of the file" in entries[1].error.detail


def test_bad_length_crc_field_itself(three):
    path, _, offsets = three
    _corrupt(path, offsets[0] + 9)  # the stored length CRC
    _expect_error(path, "bad_length_crc", 0)
    with pytest.raises(TFRecordError, match="bad_length_crc"):
        count_tfrecord(path)


@pytest.mark.parametrize("where", ["payload", "footer"])
def test_bad_data_crc_is_recoverable(three, where):
    path, payloads, offsets = three
    pos = offsets[1] + 12 + 5 if where == "payload" else offsets[1] + 12 + len(payloads[1]) + 1
    _corrupt(path, pos)
    _expect_error(path, "bad_data_crc", offsets[1])
    entries = list(scan_tfrecord(path))
    assert [e.error is None for e in entries] == [True, False, True]
    assert entries[1].error.recoverable and entries[1].offset == offsets[1]
    assert entries[1].payload is not None and len(entries[1].payload) == 20  # kept for quarantine
    assert entries[2].payload == payloads[2]
    assert count_tfrecord(path) == 3  # counting needs only the lengths


@pytest.mark.parametrize("cut", [1, 5, 12, 20, 12 + 30, 12 + 30 + 3])
def test_truncation_names_file_and_offset(three, cut):
    path, _, offsets = three
    raw = path.read_bytes()
    path.write_bytes(raw[: offsets[2] + cut])
    err = _expect_error(path, "truncated", offsets[2])
    assert "file ends" in err.detail
    with pytest.raises(TFRecordError, match="truncated"):
        count_tfrecord(path)


def test_corrupt_gzip_stream_is_reported_not_raised(tmp_path):
    path = tmp_path / "x.tfrecord.gz"
    with TFRecordWriter(path, gzip_level=6) as w:
        for i in range(50):
            w.write(bytes([i]) * 1000)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    entries = list(scan_tfrecord(path))
    assert entries[-1].error is not None and entries[-1].error.reason in (
        "truncated",
        "bad_data_crc",
        "bad_length_crc",
    )
    with pytest.raises(TFRecordError) as info:
        list(iter_tfrecord(path))
    assert str(path) in str(info.value)


def test_huge_length_with_valid_crc_is_truncation_not_allocation(tmp_path):
    header = struct.pack("<Q", 1 << 60)
    path = tmp_path / "huge.tfrecord"
    path.write_bytes(header + struct.pack("<I", masked_crc32c(header)) + b"x" * 10)
    _expect_error(path, "truncated", 0)


def test_verify_false_skips_crc_checks(three):
    path, _, offsets = three
    _corrupt(path, offsets[1] + 12 + 5)
    assert len(list(iter_tfrecord(path, verify=False))) == 3


def test_empty_file_has_no_records(tmp_path):
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    assert list(iter_tfrecord(path)) == [] and count_tfrecord(path) == 0


# ---------------------------------------------------------------------------------------- writer


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "out.tfrecord"
    with pytest.raises(RuntimeError), TFRecordWriter(path) as w:
        w.write(b"half")
        raise RuntimeError("crash mid-shard")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary is left behind
    with TFRecordWriter(path) as w:
        w.write(b"whole")
        assert not path.exists()  # invisible until closed
    assert [p for _, p in iter_tfrecord(path)] == [b"whole"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.tfrecord"]
