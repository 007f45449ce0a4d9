"""Writes tests/goldens/data/: Example and TFRecord bytes made by real TensorFlow, for the codec tests.

TensorFlow is not a dependency of sawt; run this in a throwaway venv that has it (tensorflow-cpu 2.21.0
made the committed goldens):

    python3.12 -m venv .venv-tf && .venv-tf/bin/pip install tensorflow-cpu==2.21.0
    .venv-tf/bin/python tools/dev/make_tf_goldens.py            # writes tests/goldens/data/

The default test suite then checks, without TensorFlow, that our encoder reproduces these bytes exactly
and that our decoder reads them (and TF's parse of hand-built unpacked encodings) to the same values.
Before writing, this script also checks the other direction live: TF parses what our encoder writes and
reads what our TFRecord writer writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "goldens" / "data"


def _all_kinds_values() -> dict:
    """Feature values covering every list kind, empty lists, odd floats and extreme ints (JSON-able)."""
    return {
        "bytes_many": {
            "kind": "bytes",
            "value": [b.hex() for b in (b"", b"a", "مرحبا بالعالم".encode(), b"\x00\xff")],
        },
        "bytes_empty": {"kind": "bytes", "value": []},
        "float_many": {
            "kind": "float",
            "value": [0.0, -0.0, 1.5, -2.25, 3.4028234663852886e38, 1.401298464324817e-45, 1e-3, 12345.678],
        },
        "float_special": {"kind": "float_bits", "value": [0x7F800000, 0xFF800000, 0x7FC00000]},
        "float_empty": {"kind": "float", "value": []},
        "int_many": {"kind": "int", "value": [0, 1, -1, 127, 128, 300, -(2**63), 2**63 - 1, 16000]},
        "int_empty": {"kind": "int", "value": []},
        "z_one_float": {"kind": "float", "value": [0.5]},
    }


def _values_for_tf(spec: dict) -> list:
    if spec["kind"] == "bytes":  # stored as hex so any bytes fit in JSON
        return [bytes.fromhex(v) for v in spec["value"]]
    if spec["kind"] == "float_bits":
        return np.asarray(spec["value"], dtype="<u4").view("<f4").tolist()
    return list(spec["value"])


def _tf_example(tf, values: dict):
    feature = {}
    for name, spec in values.items():
        vals = _values_for_tf(spec)
        if spec["kind"] == "bytes":
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=vals))
        elif spec["kind"] in ("float", "float_bits"):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=vals))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=vals))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def speech_wave() -> np.ndarray:
    """The deterministic 0.01 s waveform of the speech golden (tests rebuild it with this function)."""
    t = np.arange(160, dtype=np.float64) / 16000.0
    return (0.25 * np.sin(2 * np.pi * 440.0 * t) + 0.01 * np.cos(2 * np.pi * 3000.0 * t)).astype(np.float32)


SPEECH = {"text": "السلام عليكم", "dataset_name": "golden", "sample_id": "golden-0001", "sample_rate": 16000}


def _tf_speech(tf):
    wave = speech_wave()
    f = tf.train.Feature
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "audio": f(float_list=tf.train.FloatList(value=wave.tolist())),
                "audio_len": f(int64_list=tf.train.Int64List(value=[wave.size])),
                "sample_rate": f(int64_list=tf.train.Int64List(value=[SPEECH["sample_rate"]])),
                "duration": f(float_list=tf.train.FloatList(value=[wave.size / SPEECH["sample_rate"]])),
                "text": f(bytes_list=tf.train.BytesList(value=[SPEECH["text"].encode()])),
                "dataset_name": f(bytes_list=tf.train.BytesList(value=[SPEECH["dataset_name"].encode()])),
                "sample_id": f(bytes_list=tf.train.BytesList(value=[SPEECH["sample_id"].encode()])),
            }
        )
    )


def _hand_built_unpacked() -> bytes:
    """An Example whose float and int lists are written unpacked, plus unknown fields at every level."""

    def varint(v: int) -> bytes:
        v &= (1 << 64) - 1
        out = bytearray()
        while v > 0x7F:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        return bytes(out)

    def ld(tag: int, payload: bytes) -> bytes:
        return bytes([tag]) + varint(len(payload)) + payload

    floats = np.asarray([1.0, -0.5, 3.25], dtype="<f4")
    unpacked_floats = b"".join(b"\x0d" + f.tobytes() for f in floats)
    # FloatList: unpacked values, then a packed chunk, then an unknown varint field 7.
    float_list = unpacked_floats + ld(0x0A, np.asarray([9.0], "<f4").tobytes()) + b"\x38\x05"
    int_list = b"".join(b"\x08" + varint(v) for v in (5, -7, 300)) + ld(0x0A, varint(2**40))
    unknown_len = ld(0x2A, b"ignored")  # field 5, length-delimited
    entries = [
        ld(0x0A, ld(0x0A, b"f") + ld(0x12, ld(0x12, float_list) + unknown_len)),
        ld(0x0A, ld(0x0A, b"i") + ld(0x12, ld(0x1A, int_list)) + b"\x18\x01"),  # unknown field 3 in entry
        ld(0x0A, ld(0x0A, b"s") + ld(0x12, ld(0x0A, ld(0x0A, b"x") + b"\x15\x00\x00\x00\x00"))),
    ]
    features = b"".join(entries) + b"\x11" + b"\x01" * 8  # unknown fixed64 field 2 in Features
    return ld(0x0A, features) + ld(0x12, b"unknown example field")


def _parsed_by_tf(tf, data: bytes) -> dict:
    ex = tf.train.Example.FromString(data)
    out = {}
    for name, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "float_list":
            out[name] = {
                "kind": "float_bits",
                "value": np.asarray(feat.float_list.value, "<f4").view("<u4").tolist(),
            }
        elif kind == "int64_list":
            out[name] = {"kind": "int", "value": list(feat.int64_list.value)}
        else:
            out[name] = {"kind": "bytes_hex", "value": [v.hex() for v in feat.bytes_list.value]}
    return out


def main() -> int:
    import tensorflow as tf

    sys.path.insert(0, str(ROOT))
    from trainer.data.example import encode_example, encode_speech
    from trainer.data.tfrecord import TFRecordWriter

    OUT.mkdir(parents=True, exist_ok=True)
    values = _all_kinds_values()
    all_kinds = _tf_example(tf, values)
    (OUT / "all_kinds.json").write_text(json.dumps(values, indent=1, ensure_ascii=False) + "\n")
    (OUT / "all_kinds.det.pb").write_bytes(all_kinds.SerializeToString(deterministic=True))
    (OUT / "all_kinds.pb").write_bytes(all_kinds.SerializeToString())  # TF's default (hash) map order
    speech = _tf_speech(tf).SerializeToString(deterministic=True)
    (OUT / "speech.det.pb").write_bytes(speech)
    (OUT / "speech.json").write_text(json.dumps(SPEECH, ensure_ascii=False) + "\n")
    unpacked = _hand_built_unpacked()
    (OUT / "unpacked.pb").write_bytes(unpacked)
    (OUT / "unpacked.tf.json").write_text(json.dumps(_parsed_by_tf(tf, unpacked), indent=1) + "\n")

    payloads = [speech, b"", all_kinds.SerializeToString(deterministic=True), b"x" * 300]
    for name, options in (("records.tfrecord", None), ("records.tfrecord.gz", "GZIP")):
        with tf.io.TFRecordWriter(str(OUT / name), options=options) as writer:
            for p in payloads:
                writer.write(p)

    # The other direction, checked live: TF reads what we write.
    ours = encode_speech(speech_wave(), SPEECH["text"], SPEECH["dataset_name"], SPEECH["sample_id"])
    parsed = tf.io.parse_single_example(
        ours,
        {
            "audio": tf.io.FixedLenFeature([160], tf.float32),
            "audio_len": tf.io.FixedLenFeature([], tf.int64),
            "text": tf.io.FixedLenFeature([], tf.string),
        },
    )
    assert np.array_equal(parsed["audio"].numpy(), speech_wave()), "TF parses our audio differently"
    assert parsed["text"].numpy().decode() == SPEECH["text"]
    assert ours == speech, "our speech encoding differs from TF's deterministic bytes"
    tmp = OUT / "_ours.tfrecord"
    with TFRecordWriter(tmp) as writer:
        for p in payloads:
            writer.write(p)
    read_back = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp))]
    tmp.unlink()
    assert read_back == payloads, "TF reads our TFRecord differently"
    spec_values = {
        name: np.asarray(_values_for_tf(s), np.float32)
        if s["kind"] in ("float", "float_bits")
        else (
            np.asarray(_values_for_tf(s), np.int64)
            if s["kind"] == "int"
            else np.asarray(_values_for_tf(s), "O")
        )
        for name, s in values.items()
    }
    assert encode_example(spec_values) == all_kinds.SerializeToString(deterministic=True)
    print(f"wrote {sorted(p.name for p in OUT.iterdir())} with tensorflow {tf.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
