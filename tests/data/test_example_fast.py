"""The compiled Example fast path (trainer/data/_example_fast.c) against its Python reference.

`_decode_canonical` (Python) is the specification: on every input the C `decode_canonical` must return the
same dict (same keys in the same order, the same kinds, dtypes, values bit for bit, the same zero-copy and
writability) or, exactly where Python does, None. Inputs: valid Examples in TF's layout and with
non-minimal varints, every prefix of them, byte flips and insertions, random bytes, and hand-made edge cases
(lengths near 2**64, 10 and 11 byte varints, keys that are not UTF-8).
"""

from __future__ import annotations

import os
import struct
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.wire import ld as _ld
from tests.helpers.wire import varint as _varint
from trainer.data import example
from trainer.data.example import encode_example

python_fast = example._decode_canonical
c_fast = example.FAST_DECODERS.get("c")
needs_c = pytest.mark.skipif(
    c_fast is None, reason="the C fast path is not built (see test_c_module_is_built)"
)


def test_c_module_is_built():
    """The dev environment (``make setup``) must have the compiled decoder, so a broken build fails here.

    Skipped only with SAWT_ALLOW_PURE_PYTHON_CODEC=1: for a machine without a C compiler, where the package
    installs as pure Python on purpose and decodes with the (slower, identical) Python fast path.
    """
    if os.environ.get("SAWT_ALLOW_PURE_PYTHON_CODEC") == "1":
        pytest.skip("SAWT_ALLOW_PURE_PYTHON_CODEC=1: a pure-Python install is allowed here")
    assert example.FAST_DECODER_IMPL == "c", (
        "trainer/data/_example_fast.c is not built: rerun `make setup` (needs a C compiler), or "
        "`.venv/bin/python hatch_build.py` to see the compiler's error"
    )
    assert example._decode_fast is c_fast


def _assert_identical(got, want, buf: bytes) -> None:
    if want is None:
        assert got is None
        return
    assert got is not None, "C stepped aside where Python decoded"
    assert type(got) is dict and list(got) == list(want)  # same keys, same order
    for key, w in want.items():
        g = got[key]
        assert type(g) is type(w), key
        if isinstance(w, list):
            assert all(type(x) is bytes for x in g) and g == w, key
            continue
        assert g.dtype == w.dtype and g.shape == w.shape and g.ndim == 1, key
        assert g.tobytes() == w.tobytes(), key  # bitwise: NaN payloads, -0.0
        assert g.flags.writeable == w.flags.writeable, key
        assert g.flags.c_contiguous, key
        if w.base is buf:  # a zero-copy view in Python: the same view in C
            assert g.base is buf, key
            assert g.__array_interface__["data"][0] == w.__array_interface__["data"][0], key


def _check(buf: bytes) -> None:
    _assert_identical(c_fast(buf), python_fast(buf), buf)


# ----------------------------------------------------------------------------------------- encodings


_keys = st.one_of(st.text(max_size=12), st.sampled_from(["audio", "audio_len", "text", "نص", "ключ", "🎧"]))
_float_lists = st.lists(st.floats(width=32), max_size=8).map(lambda v: np.asarray(v, np.float32))
_int_lists = st.lists(
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-1, -(2**63), 2**63 - 1, 0, 127, 128])),
    max_size=8,
)
_bytes_lists = st.lists(st.one_of(st.binary(max_size=8), st.binary(min_size=128, max_size=200)), max_size=4)


@st.composite
def _hand_built_examples(draw) -> bytes:
    """Examples in the canonical layout, written with random non-minimal varints and empty forms."""
    pads = st.integers(0, 9)
    entries = []
    for _ in range(draw(st.integers(0, 5))):
        key = draw(_keys).encode("utf-8")
        if len(key) >= 0x80:
            key = key[:0x7F]
        kind = draw(st.sampled_from(["bytes", "float", "int", "unset", "empty_list", "empty_packed"]))
        if kind == "bytes":
            body = b"".join(_ld(0x0A, v, draw(pads)) for v in draw(_bytes_lists))
            feature = _ld(0x0A, body, draw(pads))
        elif kind == "float":
            packed = draw(_float_lists).tobytes()
            feature = _ld(0x12, _ld(0x0A, packed, draw(pads)), draw(pads))
        elif kind == "int":
            packed = b"".join(_varint(v, draw(pads)) for v in draw(_int_lists))
            feature = _ld(0x1A, _ld(0x0A, packed, draw(pads)), draw(pads))
        elif kind == "unset":
            feature = b""
        elif kind == "empty_list":
            feature = bytes([draw(st.sampled_from([0x0A, 0x12, 0x1A]))]) + _varint(0, draw(pads))
        else:  # a list holding one empty packed run
            feature = _ld(draw(st.sampled_from([0x12, 0x1A])), b"\x0a\x00", draw(pads))
        entry = _ld(0x0A, key) + _ld(0x12, feature, draw(pads))
        entries.append(_ld(0x0A, entry, draw(pads)))
    return _ld(0x0A, b"".join(entries), draw(pads))


_encoded_examples = st.dictionaries(
    _keys,
    st.one_of(
        _float_lists,
        _int_lists.map(lambda v: np.asarray(v, np.int64)),
        _bytes_lists.map(lambda v: np.asarray(v, dtype=object)),
    ),
    max_size=6,
).map(encode_example)
_valid = st.one_of(_encoded_examples, _hand_built_examples())

_settings = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@needs_c
@_settings
@given(_valid)
def test_valid_examples_decode_identically(data):
    assert python_fast(data) is not None  # the generators make only the canonical layout
    _check(data)


@needs_c
@_settings
@given(_valid)
def test_every_prefix_agrees(data):
    for cut in range(len(data)):
        _check(data[:cut])


@needs_c
@_settings
@given(_valid, st.data())
def test_flips_insertions_and_deletions_agree(data, draw):
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 3))):
        op = draw.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        pos = draw.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "insert" or not buf:
            buf[pos:pos] = draw.draw(st.binary(min_size=1, max_size=3))
        elif op == "flip":
            buf[pos] ^= 1 << draw.draw(st.integers(0, 7))
        elif op == "set":
            buf[pos] = draw.draw(st.sampled_from([0x00, 0x0A, 0x12, 0x1A, 0x7F, 0x80, 0xFF]))
        else:
            del buf[pos]
    _check(bytes(buf))


@needs_c
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=48))
def test_random_bytes_agree(data):
    _check(data)


# ----------------------------------------------------------------------------------------- edge cases


def _entry(key: bytes, feature: bytes) -> bytes:
    return _ld(0x0A, _ld(0x0A, key) + _ld(0x12, feature))


_HUGE = (1 << 64) - 1
EDGE_CASES = [
    b"",
    b"\x0a",
    b"\x0a\x00",
    b"\x0b",
    b"\x0a" + _varint(_HUGE),  # Example length 2**64 - 1
    b"\x0a" + _varint(1 << 63) + b"\x0a",
    b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00",  # an 11-byte varint
    b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x00",  # a 10-byte varint of 0 (valid, non-minimal)
    b"\x0a\x02\x0a" + _varint(_HUGE),  # entry length 2**64 - 1
    b"\x0a\x0c\x0a\x0a\x0a\x01k\x12" + _varint(_HUGE),  # feature length 2**64 - 1
    _ld(0x0A, _ld(0x0A, b"\x0a\x01k\x12" + _varint(_HUGE - 3) + b"\x0a\x00")),
    _ld(0x0A, _entry(b"k", b"\x12" + _varint(_HUGE) + b"\x0a\x00")),
    _ld(0x0A, _entry(b"k", b"\x12\x02\x0a" + _varint(_HUGE))),  # packed run length 2**64 - 1
    _ld(0x0A, _entry(b"k", b"\x0a\x02\x0a" + _varint(_HUGE))),  # bytes value length 2**64 - 1
    _ld(0x0A, _entry(b"k", _ld(0x0A, b"\x0a" + _varint(1 << 63) + b"x"))),
    _ld(0x0A, _entry(b"k", _ld(0x1A, _ld(0x0A, b"\xff" * 9 + b"\x01")))),  # -1 as ten bytes
    _ld(0x0A, _entry(b"k", _ld(0x1A, _ld(0x0A, b"\xff" * 9 + b"\x7f")))),  # tenth byte past 64 bits
    _ld(0x0A, _entry(b"k", _ld(0x1A, _ld(0x0A, b"\xff" * 10 + b"\x01")))),  # eleven bytes
    _ld(0x0A, _entry(b"k", _ld(0x1A, _ld(0x0A, b"\x80")))),  # truncated
    _ld(0x0A, _entry(b"k", _ld(0x12, _ld(0x0A, b"\x00" * 6)))),  # floats not a multiple of 4
    _ld(0x0A, _entry(b"k", _ld(0x12, _ld(0x0A, b"")))),  # one empty packed run, at the very end
    _ld(0x0A, _entry(b"k", _ld(0x12, b""))),
    _ld(0x0A, _entry(b"k", _ld(0x1A, b""))),
    _ld(0x0A, _entry(b"k", _ld(0x0A, b""))),
    _ld(0x0A, _entry(b"k", b"")),
    _ld(0x0A, _entry(b"", b"")),
    _ld(0x0A, _entry(b"k", _ld(0x22, b""))),  # an unknown kind
    _ld(0x0A, _entry(b"k", _ld(0x12, _ld(0x0A, b"\x00" * 4) + b"\x0d" + b"\x00" * 4))),  # two runs
    _ld(0x0A, _entry(b"\xff", _ld(0x0A, _ld(0x0A, b"v")))),  # key not UTF-8
    _ld(0x0A, _entry(b"\xed\xa0\x80", b"")),  # a UTF-16 surrogate: not UTF-8 either
    _ld(0x0A, _entry(b"\xc0\x80", b"")),  # overlong
    _ld(0x0A, _entry(b"\xf4\x90\x80\x80", b"")),  # above U+10FFFF
    _ld(0x0A, _entry("ممتاز".encode(), _ld(0x12, _ld(0x0A, struct.pack("<2f", 1.0, -0.0))))),
    _ld(0x0A, _entry(b"k" * 0x7F, b"")),  # the longest one-byte key length
    _ld(0x0A, _entry(b"k" * 0x80, b"")),  # a two-byte key length: not the canonical layout
    _ld(
        0x0A, _ld(0x0A, b"\x0a\x81" + b"x" * 0x81 + b"\x12\x00")
    ),  # a key length byte >= 0x80 (a varint's first)
    _ld(0x0A, _entry(b"a", _ld(0x1A, _ld(0x0A, b"\x01"))) + _entry(b"a", _ld(0x0A, _ld(0x0A, b"z")))),
    _ld(0x0A, _entry(b"k", b"")) + b"\x00",  # trailing bytes after the Example
    _ld(0x0A, _ld(0x0A, b"\x0a\x01k\x12\x00") + b"\x0a"),  # an entry cut after its tag
]


@needs_c
@pytest.mark.parametrize("data", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_edge_cases_agree(data):
    _check(data)
    for cut in range(len(data)):
        _check(data[:cut])


@needs_c
def test_edge_case_results():
    """A few results spelled out, so that a shared mistake of both paths cannot hide."""
    assert c_fast(b"") == {}
    assert c_fast(EDGE_CASES[15])["k"].tolist() == [-1]
    assert c_fast(EDGE_CASES[16])["k"].tolist() == [-1]  # the bits past 64 drop, as protobuf does
    assert c_fast(EDGE_CASES[17]) is None
    empty = c_fast(EDGE_CASES[20])["k"]
    assert empty.dtype == np.float32 and empty.size == 0
    assert c_fast(EDGE_CASES[24]) == {"k": []}
    assert c_fast(EDGE_CASES[28]) is None and c_fast(EDGE_CASES[29]) is None
    assert c_fast(EDGE_CASES[36])["a"] == [b"z"]
    with pytest.raises(TypeError, match="bytes"):
        c_fast(bytearray(b""))


@needs_c
def test_no_references_or_memory_leak():
    """Accepted and rejected inputs (also rejects after values were built) leave no references behind."""
    speech = example.encode_speech(np.ones(64, np.float32), "نص", "d", "s")
    values = (
        _entry(b"f", _ld(0x12, _ld(0x0A, np.ones(64, np.float32).tobytes())))
        + _entry(b"i", _ld(0x1A, _ld(0x0A, _varint(-5))))
        + _entry(b"b", _ld(0x0A, _ld(0x0A, b"text")))
    )
    rejected_late = _ld(0x0A, values + _entry(b"\xff", b""))  # every value built, then a key not UTF-8
    assert python_fast(rejected_late) is None
    for buf in (speech, rejected_late, speech[:-3]):
        before = sys.getrefcount(buf)
        for _ in range(100):
            c_fast(buf)
        assert sys.getrefcount(buf) == before
    tracemalloc.start()
    try:
        for _ in range(200):
            c_fast(speech), c_fast(rejected_late)
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            c_fast(speech), c_fast(rejected_late)
        assert tracemalloc.get_traced_memory()[0] - start < 64 * 1024
    finally:
        tracemalloc.stop()
