"""tf.train.Example codec: TensorFlow goldens, protobuf equivalence, hand-built encodings, speech validation.

Every test runs twice, once with each fast path of the decoder (the compiled C one and its Python reference).

The goldens under tests/goldens/data/ were written by real TensorFlow 2.21 (tools/dev/make_tf_goldens.py); the
protobuf peer is google.protobuf (upb) running a descriptor with TF's field numbers (tools/dev/example_proto.py).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.wire import ld as _ld
from tests.helpers.wire import varint as _varint
from tools.dev.example_proto import example_classes
from tools.dev.make_tf_goldens import SPEECH, speech_wave
from trainer.data.example import (
    BadRecord,
    DecodeError,
    decode_example,
    decode_speech,
    encode_example,
    encode_speech,
    peek_speech_meta,
)

GOLDENS = Path(__file__).resolve().parents[1] / "goldens" / "data"


@pytest.fixture(autouse=True, params=["c", "python"])
def fast_impl(request, monkeypatch):
    """Runs every test here with each fast path of the decoder (test_example_fast.py checks "c" is built)."""
    from trainer.data import example

    if request.param not in example.FAST_DECODERS:
        pytest.skip(f"the {request.param!r} fast path is not built here")
    monkeypatch.setattr(example, "_decode_fast", example.FAST_DECODERS[request.param])
    return example.FAST_DECODERS[request.param]


def _golden(name: str) -> bytes:
    return (GOLDENS / name).read_bytes()


def _spec_to_values(spec: dict) -> dict:
    """all_kinds.json -> the typed values encode_example takes."""
    out = {}
    for name, s in spec.items():
        if s["kind"] == "bytes":
            out[name] = np.asarray([bytes.fromhex(v) for v in s["value"]], dtype=object)
        elif s["kind"] == "float":
            out[name] = np.asarray(s["value"], dtype=np.float32)
        elif s["kind"] == "float_bits":
            out[name] = np.asarray(s["value"], dtype="<u4").view("<f4")
        else:
            out[name] = np.asarray(s["value"], dtype=np.int64)
    return out


def _assert_same(decoded: dict, expected: dict) -> None:
    assert set(decoded) == set(expected)
    for name, want in expected.items():
        got = decoded[name]
        if isinstance(want, np.ndarray) and want.dtype == np.float32:
            assert got.dtype == np.float32
            # Bitwise: -0.0, NaN payloads and denormals must survive exactly.
            assert got.view("<u4").tolist() == want.view("<u4").tolist(), name
        elif isinstance(want, np.ndarray) and want.dtype == np.int64:
            assert got.dtype == np.int64 and got.tolist() == want.tolist(), name
        else:
            assert list(got) == list(want), name


# ------------------------------------------------------------------------------------- TF goldens


def test_encode_matches_tensorflow_deterministic_bytes():
    values = _spec_to_values(json.loads((GOLDENS / "all_kinds.json").read_text()))
    assert encode_example(values) == _golden("all_kinds.det.pb")


@pytest.mark.parametrize("name", ["all_kinds.det.pb", "all_kinds.pb"])
def test_decode_tensorflow_bytes(name):
    expected = _spec_to_values(json.loads((GOLDENS / "all_kinds.json").read_text()))
    _assert_same(decode_example(_golden(name)), expected)


def test_speech_matches_tensorflow_both_ways():
    data = _golden("speech.det.pb")
    ours = encode_speech(speech_wave(), SPEECH["text"], SPEECH["dataset_name"], SPEECH["sample_id"])
    assert ours == data
    rec = decode_speech(data)
    assert np.array_equal(rec.audio, speech_wave())
    assert (rec.text, rec.dataset_name, rec.sample_id) == (
        SPEECH["text"],
        SPEECH["dataset_name"],
        SPEECH["sample_id"],
    )
    assert rec.audio_len == 160 and rec.sample_rate == 16000
    assert rec.duration == pytest.approx(0.01, rel=1e-6)


def test_unpacked_and_unknown_fields_decode_as_tensorflow_parses_them():
    tf_view = json.loads((GOLDENS / "unpacked.tf.json").read_text())
    got = decode_example(_golden("unpacked.pb"))
    assert set(got) == set(tf_view)
    for name, v in tf_view.items():
        if v["kind"] == "float_bits":
            assert got[name].view("<u4").tolist() == v["value"]
        elif v["kind"] == "int":
            assert got[name].tolist() == v["value"]
        else:
            assert [b.hex() for b in got[name]] == v["value"]


# --------------------------------------------------------------------------------- zero copy


def test_packed_audio_is_a_zero_copy_view():
    data = encode_speech(np.linspace(-1, 1, 16000, dtype=np.float32), "t", "d", "s")
    audio = decode_example(data)["audio"]
    assert audio.base is data  # a view over the serialized bytes
    assert not audio.flags.writeable
    rec = decode_speech(data)
    assert rec.audio.base is data
    # The view sits exactly on the packed payload.
    offset = (
        audio.__array_interface__["data"][0] - np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    )
    assert data[offset : offset + 64000] == np.linspace(-1, 1, 16000, dtype=np.float32).tobytes()


def test_memoryview_and_bytearray_inputs():
    data = encode_example({"x": np.arange(4, dtype=np.float32)})
    for wrapped in (bytearray(data), memoryview(data)):
        assert decode_example(wrapped)["x"].tolist() == [0.0, 1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------- encoder type rules


def test_encoder_type_rules():
    d = decode_example(
        encode_example(
            {
                "s": "نص",
                "b": b"\x00",
                "bl": ["a", b"b"],
                "i": 7,
                "il": [1, -2],
                "f": 0.5,
                "fl": [1, 2.5],
                "fa": np.ones((2, 2), np.float64),
                "ia": np.array([3], np.uint8),
                "t": True,
            }
        )
    )
    assert d["s"] == ["نص".encode()] and d["b"] == [b"\x00"] and d["bl"] == [b"a", b"b"]
    assert d["i"].tolist() == [7] and d["il"].tolist() == [1, -2] and d["t"].tolist() == [1]
    assert d["f"].tolist() == [0.5] and d["fl"].tolist() == [1.0, 2.5]
    assert d["fa"].dtype == np.float32 and d["fa"].tolist() == [1.0] * 4
    assert d["ia"].dtype == np.int64 and d["ia"].tolist() == [3]


@pytest.mark.parametrize("bad", [[], [object()], object(), np.array([1 + 2j]), ["a", 1]])
def test_encoder_rejects_values_without_a_kind(bad):
    with pytest.raises(TypeError, match="'k'"):
        encode_example({"k": bad})


def test_encoder_rejects_uint64_overflow():
    with pytest.raises(OverflowError):
        encode_example({"k": np.array([2**63], np.uint64)})


# ------------------------------------------------------------------------- hand-built encodings


def _entry(key: bytes, feature: bytes) -> bytes:
    return _ld(0x0A, _ld(0x0A, key) + _ld(0x12, feature))


def _example(*entries: bytes, tail: bytes = b"") -> bytes:
    return _ld(0x0A, b"".join(entries)) + tail


def test_unpacked_floats_and_ints():
    floats = b"".join(b"\x0d" + struct.pack("<f", v) for v in (1.0, -2.0, 0.25))
    ints = b"".join(b"\x08" + _varint(v) for v in (-1, 0, 2**62))
    data = _example(_entry(b"f", _ld(0x12, floats)), _entry(b"i", _ld(0x1A, ints)))
    d = decode_example(data)
    assert d["f"].tolist() == [1.0, -2.0, 0.25]
    assert d["i"].tolist() == [-1, 0, 2**62]


def test_mixed_packed_and_unpacked_chunks_concatenate():
    body = (
        b"\x0d"
        + struct.pack("<f", 1.0)
        + _ld(0x0A, struct.pack("<2f", 2.0, 3.0))
        + b"\x0d"
        + struct.pack("<f", 4.0)
    )
    assert decode_example(_example(_entry(b"f", _ld(0x12, body))))["f"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_unknown_fields_at_every_level_are_skipped():
    unknown = b"\x28\x05" + _ld(0x32, b"junk") + b"\x3d" + b"\x00" * 4 + b"\x39" + b"\x00" * 8
    group = b"\x43" + b"\x08\x01" + b"\x44"  # field 8 start-group, a varint inside, end-group
    float_list = _ld(0x0A, struct.pack("<f", 1.5)) + unknown
    feature = _ld(0x12, float_list) + unknown
    entry = _ld(0x0A, _ld(0x0A, b"x") + _ld(0x12, feature))
    data = _ld(0x0A, entry + unknown + group) + unknown + group
    assert decode_example(data)["x"].tolist() == [1.5]


def test_map_entry_with_unknown_fields_is_left_out_as_protobuf_does():
    good = _entry(b"a", _ld(0x0A, _ld(0x0A, b"v")))
    odd = _ld(0x0A, _ld(0x0A, b"b") + _ld(0x12, _ld(0x0A, _ld(0x0A, b"w"))) + b"\x18\x01")
    data = _example(good, odd)
    assert decode_example(data) == {"a": [b"v"]}
    assert set(example_classes().Example.FromString(data).features.feature) == {"a"}


def test_protobuf_merge_semantics():
    # A repeated key replaces the earlier entry; a repeated Example.features field merges its map.
    first = _example(_entry(b"k", _ld(0x1A, _ld(0x0A, _varint(1)))))
    second = _example(
        _entry(b"k", _ld(0x1A, _ld(0x0A, _varint(2)))), _entry(b"j", _ld(0x0A, _ld(0x0A, b"v")))
    )
    d = decode_example(first + second)
    assert d["k"].tolist() == [2] and d["j"] == [b"v"]
    # Within a Feature: the same kind twice merges (lists concatenate); another kind replaces it.
    same = _ld(0x1A, _ld(0x0A, _varint(1))) + _ld(0x1A, _ld(0x0A, _varint(2)))
    assert decode_example(_example(_entry(b"k", same)))["k"].tolist() == [1, 2]
    other = _ld(0x1A, _ld(0x0A, _varint(1))) + _ld(0x0A, _ld(0x0A, b"b"))
    assert decode_example(_example(_entry(b"k", other)))["k"] == [b"b"]


def test_entry_without_key_and_feature_without_kind():
    data = _ld(0x0A, _ld(0x0A, _ld(0x12, b"")) + _entry(b"e", b""))
    assert decode_example(data) == {"": [], "e": []}
    assert decode_example(b"") == {}


def test_non_minimal_varints_are_accepted():
    # Length 3 written as a two-byte varint, and the key tag 0x0A written as two bytes.
    body = b"\x0a\x83\x00" + b"abc"
    data = _ld(
        0x0A,
        b"\x8a\x00"
        + _varint(len(_ld(0x0A, b"k") + _ld(0x12, _ld(0x0A, body))))
        + _ld(0x0A, b"k")
        + _ld(0x12, _ld(0x0A, body)),
    )
    assert decode_example(data) == {"k": [b"abc"]}


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a",  # length missing
        b"\x0a\x05\x0a",  # length runs past the end
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint longer than 10 bytes
        b"\x00\x00",  # field number 0
        b"\x0e",  # wire type 6
        b"\x0b\x08\x01",  # unterminated group
        b"\xa1\x80\x80\x80\x10\x00",  # field key above 32 bits
        b"\x8a\x80\x80\x80\x80\x00\x00",  # field key varint longer than 5 bytes
        _example(_entry(b"f", _ld(0x12, _ld(0x0A, b"\x00\x00\x00")))),  # packed floats not a multiple of 4
        _example(_entry(b"\xff", b"")),  # key not UTF-8
        _example(_entry(b"i", _ld(0x1A, _ld(0x0A, b"\x80")))),  # truncated packed varint
        # Parts that a later field overrides must still be well-formed (protobuf parses them all):
        _ld(0x0A, _ld(0x0A, _ld(0x0A, b"\xc6") + b"\x10\x05" + _ld(0x0A, b"k"))),  # an earlier key not UTF-8
        _example(
            _entry(b"a", _ld(0x0A, b"\x00\x00")), _entry(b"a", _ld(0x0A, b""))
        ),  # a replaced entry broken
        _example(_entry(b"a", _ld(0x0A, b"\x00\x00") + _ld(0x1A, b""))),  # a replaced oneof member broken
    ],
)
def test_malformed_bytes_raise_decode_error(data):
    with pytest.raises(DecodeError):
        decode_example(data)


# ------------------------------------------------------------------------------ property tests

_keys = st.text(min_size=0, max_size=12)
_floats = st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=20).map(
    lambda v: np.asarray(v, np.float32)
)
_ints = st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20).map(lambda v: np.asarray(v, np.int64))
_bytes = st.lists(st.binary(max_size=20), max_size=6).map(lambda v: np.asarray(v, dtype=object))
_features = st.dictionaries(_keys, st.one_of(_floats, _ints, _bytes), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_features)
def test_round_trip_and_protobuf_equivalence(features):
    data = encode_example(features)
    _assert_same(decode_example(data), {k: v if v.dtype != object else list(v) for k, v in features.items()})

    pb = example_classes()
    msg = pb.Example.FromString(data)  # protobuf reads our bytes...
    for name, value in features.items():
        feat = msg.features.feature[name]
        if value.dtype == np.float32:
            assert (
                np.asarray(feat.float_list.value, np.float32).view("<u4").tolist()
                == value.view("<u4").tolist()
            )
        elif value.dtype == np.int64:
            assert list(feat.int64_list.value) == value.tolist()
        else:
            assert list(feat.bytes_list.value) == list(value)
    assert msg.SerializeToString(deterministic=True) == data  # ...and writes exactly them
    # Protobuf's default (hash-ordered) serialization decodes to the same values.
    _assert_same(decode_example(msg.SerializeToString()), decode_example(data))


@st.composite
def _mutated_examples(draw) -> bytes:
    """Valid encodings with a few bytes replaced, inserted or cut: near-misses that stress every branch."""
    data = bytearray(encode_example(draw(_features)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "splice", "cut"]))
        pos = draw(st.integers(0, len(data)))
        if op == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
        elif op == "splice" and data:  # a copy of a piece of itself: repeated fields, keys and entries
            start = draw(st.integers(0, len(data) - 1))
            data[pos:pos] = data[start : start + draw(st.integers(1, 12))]
        else:
            del data[pos:]
    return bytes(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=64), _mutated_examples()))
def test_arbitrary_bytes_never_crash_and_agree_with_protobuf(data):
    pb = example_classes()
    try:
        msg = pb.Example.FromString(data)
    except Exception:  # protobuf's DecodeError
        msg = None
    try:
        ours = decode_example(data)
    except DecodeError:
        ours = None
    assert (ours is None) == (msg is None), "protobuf and we disagree on whether these bytes are an Example"
    if msg is None:
        return
    expected = {}
    for name, feat in msg.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "float_list":
            expected[name] = np.asarray(feat.float_list.value, np.float32)
        elif kind == "int64_list":
            expected[name] = np.asarray(feat.int64_list.value, np.int64)
        else:
            expected[name] = list(feat.bytes_list.value)
    _assert_same(ours, expected)


# ---------------------------------------------------------------------------- speech validation


def _speech(**overrides) -> bytes:
    wave = np.sin(np.arange(800, dtype=np.float32) / 10)
    feats = {
        "audio": wave,
        "audio_len": 800,
        "sample_rate": 16000,
        "duration": 0.05,
        "text": "كلام",
        "dataset_name": "src",
        "sample_id": "id-1",
    }
    feats.update(overrides)
    return encode_example({k: v for k, v in feats.items() if v is not None})


def test_decode_speech_accepts_a_good_record():
    rec = decode_speech(_speech())
    assert rec.audio_len == 800 and rec.text == "كلام" and rec.sample_id == "id-1"
    meta = peek_speech_meta(_speech())
    assert (meta.dataset_name, meta.audio_len, meta.sample_rate) == ("src", 800, 16000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x0a\x05\x0a", "undecodable"),
        (_speech(text=b"\xff\xfe"), "undecodable"),
        (_speech(audio=None), "missing_feature"),
        (_speech(text=None), "missing_feature"),
        (_speech(sample_id=None), "missing_feature"),
        (_speech(audio_len=[800, 1]), "missing_feature"),
        (_speech(audio=np.arange(800, dtype=np.int64)), "missing_feature"),
        (_speech(audio_len=799), "audio_len_mismatch"),
        (_speech(audio=np.full(800, np.nan, np.float32)), "non_finite_audio"),
        (_speech(audio=np.r_[np.zeros(799, np.float32), np.float32(np.inf)]), "non_finite_audio"),
        (_speech(sample_rate=8000), "wrong_sample_rate"),
    ],
)
def test_decode_speech_reasons(data, reason):
    with pytest.raises(BadRecord) as info:
        decode_speech(data)
    assert info.value.reason == reason


def test_expected_rate_none_accepts_any_positive_rate():
    assert decode_speech(_speech(sample_rate=8000), expected_rate=None).sample_rate == 8000
    with pytest.raises(BadRecord, match="wrong_sample_rate"):
        decode_speech(_speech(sample_rate=0), expected_rate=None)


# The fixture is function-scoped but the same for every example of one run (one fast path), so reusing it is safe.
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.one_of(_features.map(encode_example), _mutated_examples()))
def test_fast_path_agrees_with_the_generic_parser(fast_impl, data):
    """The one-pass decoder of TF's layout must give what the generic parser gives, or step aside."""
    from trainer.data.example import _parse_generic

    fast = fast_impl(data)
    try:
        generic = {name: f.value(data) for name, f in _parse_generic(data).items()}
    except DecodeError:
        assert fast is None
        return
    if fast is not None:
        assert list(fast) == list(generic)
        _assert_same(fast, generic)


def test_fast_path_handles_what_tensorflow_writes(fast_impl):
    for name in ("all_kinds.det.pb", "all_kinds.pb", "speech.det.pb"):
        assert fast_impl(_golden(name)) is not None, name
    assert fast_impl(_golden("unpacked.pb")) is None  # unpacked lists go to the generic parser
