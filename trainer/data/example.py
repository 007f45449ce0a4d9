"""`tf.train.Example` encoder and decoder: Python + numpy, one small C fast path (no TensorFlow, no protobuf).

The wire format (TensorFlow's example.proto / feature.proto):

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }      # each entry: { string key = 1; Feature value = 2; }
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

Why a hand-written codec: a speech Example is dominated by one packed float list (a 10 s clip at 16 kHz is
640 KB of little-endian float32). Decoding it is a handful of varint reads plus one ``np.frombuffer`` over
those bytes, with no copy, instead of building 160,000 Python floats as a generic protobuf parse does.

Encoding reproduces TensorFlow's ``SerializeToString(deterministic=True)`` byte for byte (checked against
goldens made with real TensorFlow in tests/goldens/data/): packed repeated scalars, empty lists omitted,
both key and value written for every map entry, and map entries in the order of protobuf's upb runtime
(TF's Python default): bytewise ascending, except that a key sorts *after* the keys it is a prefix of
("audio_len" before "audio"). Other runtimes order prefix keys the other way; every order decodes the same.
TF's non-deterministic ``SerializeToString()`` uses hash-table order, which no other writer reproduces.
Decoding accepts everything a conforming protobuf parser accepts: unpacked floats and ints, chunks of both
mixed, fields in any order, repeated (merged) messages and unknown fields at every level.

Decoding runs in two tiers. A fast path reads exactly the layout TensorFlow writes in one pass and steps
aside (returns None) for anything else; the generic parser then decides the result or the error. The fast
path is compiled C (`_example_fast.c`, built by hatch_build.py at install time) where a C compiler was
available, else its Python reference `_decode_canonical`; both give identical results, and
`FAST_DECODER_IMPL` says which one runs ("c" or "python").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.data.audio_io import SAMPLE_RATE

SPEECH_FEATURES = ("audio", "audio_len", "sample_rate", "duration", "text", "dataset_name", "sample_id")
BAD_RECORD_REASONS = (
    "undecodable",
    "missing_feature",
    "audio_len_mismatch",
    "non_finite_audio",
    "wrong_sample_rate",
)

# Protobuf wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5

_F32 = np.dtype("<f4")
_MASK64 = (1 << 64) - 1


class DecodeError(ValueError):
    """The bytes are not a well-formed serialized `tf.train.Example`."""


class BadRecord(Exception):
    """A speech record that cannot be used, with a machine-readable reason (one of BAD_RECORD_REASONS)."""

    def __init__(self, reason: str, detail: str):
        assert reason in BAD_RECORD_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------- encoding


def _varint(value: int) -> bytes:
    value &= _MASK64  # negative int64 -> ten-byte two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def _is_text(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | memoryview | str | np.bytes_ | np.str_)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str | np.str_):
        return str(value).encode("utf-8")
    return bytes(value)


def _encode_feature(key: str, value: Any) -> bytes:
    """Serializes one Feature message for ``value`` (see `encode_example` for the type rules)."""
    if _is_text(value):
        return _len_field(0x0A, _len_field(0x0A, _as_bytes(value)))
    if isinstance(value, bool | int | np.integer):
        return _len_field(0x1A, _len_field(0x0A, _varint(int(value))))
    if isinstance(value, float | np.floating):
        return _len_field(0x12, _len_field(0x0A, np.asarray([value], _F32).tobytes()))
    if isinstance(value, np.ndarray):
        array = value.reshape(-1)
        if array.dtype.kind in "SUO":
            return _encode_bytes_list([_as_bytes(v) for v in array])
        if array.dtype.kind in "biu":
            return _encode_int64_list(array)
        if array.dtype.kind == "f":
            return _encode_float_list(array)
        raise TypeError(f"feature {key!r}: cannot encode a numpy array of dtype {array.dtype}")
    if isinstance(value, Iterable):
        items = list(value)
        if not items:
            raise TypeError(f"feature {key!r}: an empty list has no type; pass a typed numpy array")
        if all(_is_text(v) for v in items):
            return _encode_bytes_list([_as_bytes(v) for v in items])
        if all(isinstance(v, bool | int | np.integer) for v in items):
            return _encode_int64_list(np.asarray(items, dtype=np.int64))
        if all(isinstance(v, bool | int | float | np.integer | np.floating) for v in items):
            return _encode_float_list(np.asarray(items, dtype=np.float64))
        raise TypeError(f"feature {key!r}: a list must hold only bytes/str, only ints or only numbers")
    raise TypeError(f"feature {key!r}: cannot encode a value of type {type(value).__name__}")


def _encode_bytes_list(items: list[bytes]) -> bytes:
    return _len_field(0x0A, b"".join(_len_field(0x0A, v) for v in items))


def _encode_float_list(array: np.ndarray) -> bytes:
    packed = np.ascontiguousarray(array, dtype=_F32).tobytes()
    return _len_field(0x12, _len_field(0x0A, packed) if packed else b"")


def _encode_int64_list(array: np.ndarray) -> bytes:
    if array.dtype.kind == "u" and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise OverflowError("an int64 feature cannot hold values above 2**63 - 1")
    packed = b"".join(_varint(int(v)) for v in array.tolist())
    return _len_field(0x1A, _len_field(0x0A, packed) if packed else b"")


def _map_key_order(key: str) -> tuple[int, ...]:
    # upb sorts string keys by memcmp, with a key that is a prefix of another placed after it; the sentinel
    # 256 (above every byte value) gives exactly that order.
    return (*key.encode("utf-8"), 256)


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serializes a `tf.train.Example` holding ``features``.

    Type rules per value: ``bytes``/``str`` or a list of them -> BytesList (str as UTF-8); a float, a
    float numpy array or a list of numbers with a float in it -> packed FloatList (float32); an int, an
    integer numpy array or a list of ints -> packed Int64List. Multi-dimensional arrays are flattened.

    Args:
        features: feature name -> value.

    Returns:
        The serialized Example, byte-identical to TensorFlow's deterministic serialization.

    Raises:
        TypeError: a value of an unsupported type, or an empty Python list (its kind is unknown).
    """
    entries = []
    for key in sorted(features, key=_map_key_order):
        entry = _len_field(0x0A, key.encode("utf-8")) + _len_field(0x12, _encode_feature(key, features[key]))
        entries.append(_len_field(0x0A, entry))
    return _len_field(0x0A, b"".join(entries))


def encode_speech(
    audio: np.ndarray,
    text: str,
    dataset_name: str,
    sample_id: str,
    sample_rate: int = SAMPLE_RATE,
) -> bytes:
    """Serializes one speech clip in the seed schema.

    Args:
        audio: mono waveform, converted to float32.
        text: transcript.
        dataset_name: name of the source corpus (used for per-source statistics and metrics).
        sample_id: unique id of the clip within its corpus.
        sample_rate: samples per second of ``audio``.

    Returns:
        The serialized Example with ``audio``, ``audio_len``, ``sample_rate``, ``duration``
        (= len / sample_rate), ``text``, ``dataset_name`` and ``sample_id``.
    """
    wave = np.ascontiguousarray(np.asarray(audio, dtype=_F32).reshape(-1))
    return encode_example(
        {
            "audio": wave,
            "audio_len": int(wave.size),
            "sample_rate": int(sample_rate),
            "duration": float(wave.size) / float(sample_rate),
            "text": text,
            "dataset_name": dataset_name,
            "sample_id": sample_id,
        }
    )


# --------------------------------------------------------------------------------------------- decoding


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos + 3 <= end:  # unrolled for 1-3 byte varints: every length and count up to 2 MB
        b0 = buf[pos]
        if b0 < 0x80:
            return b0, pos + 1
        b1 = buf[pos + 1]
        if b1 < 0x80:
            return (b0 & 0x7F) | (b1 << 7), pos + 2
        b2 = buf[pos + 2]
        if b2 < 0x80:
            return (b0 & 0x7F) | ((b1 & 0x7F) << 7) | (b2 << 14), pos + 3
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def _read_tag(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A field key: a varint of at most 5 bytes and 32 bits, as protobuf requires."""
    key, new_pos = _read_varint(buf, pos, end)
    if new_pos - pos > 5 or key >> 32:
        raise DecodeError("field key longer than 32 bits")
    return key, new_pos


def _fields(buf: bytes, pos: int, end: int):
    """Yields (field number, wire type, value) over a message; LEN values are (start, stop) spans.

    Unknown fields are yielded too; the callers ignore the numbers they do not know.
    """
    while pos < end:
        key, pos = _read_tag(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            yield number, wire, value
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos, end)
            stop = pos + size
            if stop > end:
                raise DecodeError(f"length-delimited field {number} runs past its message")
            yield number, wire, (pos, stop)
            pos = stop
        elif wire == _I32:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32")
            yield number, wire, pos
            pos += 4
        elif wire == _I64:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64")
            yield number, wire, pos
            pos += 8
        elif wire == _SGROUP:
            pos = _skip_group(buf, pos, end, number)
            yield number, wire, None
        else:
            raise DecodeError(f"invalid wire type {wire} for field {number}")


def _skip_group(buf: bytes, pos: int, end: int, number: int) -> int:
    """Skips a (deprecated) group up to its matching end tag; groups only occur as unknown fields here."""
    while pos < end:
        key, pos = _read_tag(buf, pos, end)
        inner, wire = key >> 3, key & 7
        if wire == _EGROUP:
            if inner != number:
                raise DecodeError("mismatched end-group tag")
            return pos
        if wire == _VARINT:
            _, pos = _read_varint(buf, pos, end)
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos, end)
            pos += size
        elif wire == _I32:
            pos += 4
        elif wire == _I64:
            pos += 8
        elif wire == _SGROUP:
            pos = _skip_group(buf, pos, end, inner)
        else:
            raise DecodeError(f"invalid wire type {wire} in group")
        if pos > end:
            raise DecodeError("group runs past its message")
    raise DecodeError("unterminated group")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class _Feature:
    """One Feature while parsing: its kind (1 bytes, 2 float, 3 int64, 0 unset) and the spans of its list.

    Each span is the body of one XList message; protobuf merges repeated occurrences, so there can be
    several (only in hand-made encodings: TensorFlow always writes one).
    """

    __slots__ = ("chunks", "kind")

    def __init__(self, kind: int = 0, chunks: list | None = None) -> None:
        self.kind = kind
        self.chunks: list[tuple[int, int]] = chunks if chunks is not None else []

    def merge(self, buf: bytes, start: int, stop: int) -> None:
        for number, wire, value in _fields(buf, start, stop):
            if number not in (1, 2, 3) or wire != _LEN:
                continue  # unknown field (a known number with the wrong wire type counts as unknown)
            if number != self.kind:  # a different oneof member replaces the earlier one...
                if self.chunks:
                    self.value(buf)  # ...which must still have been well-formed, as protobuf checks
                self.kind = number
                self.chunks = []
            self.chunks.append(value)

    def value(self, buf: bytes) -> np.ndarray | list[bytes]:
        if self.kind == 2:
            return _float_values(buf, self.chunks)
        if self.kind == 3:
            return np.asarray(_int_values(buf, self.chunks), dtype=np.int64)
        return _bytes_values(buf, self.chunks)  # kind 1, or unset: an empty bytes list


def _unpacked_floats(buf: bytes, start: int, stop: int) -> np.ndarray | None:
    """Fast path for a FloatList written unpacked: tag 0x0D + 4 bytes, repeated; None if not that shape."""
    if stop <= start or (stop - start) % 5 or buf[start] != 0x0D:
        return None
    rows = np.frombuffer(buf, np.uint8, count=stop - start, offset=start).reshape(-1, 5)
    if not (rows[:, 0] == 0x0D).all():
        return None
    return np.ascontiguousarray(rows[:, 1:]).view(_F32).reshape(-1)


def _float_values(buf: bytes, chunks: list[tuple[int, int]]) -> np.ndarray:
    parts: list[np.ndarray] = []
    for start, stop in chunks:
        unpacked = _unpacked_floats(buf, start, stop)
        if unpacked is not None:
            parts.append(unpacked)
            continue
        for number, wire, value in _fields(buf, start, stop):
            if number != 1:
                continue
            if wire == _LEN:
                lo, hi = value
                if (hi - lo) % 4:
                    raise DecodeError("packed float list length is not a multiple of 4")
                parts.append(np.frombuffer(buf, dtype=_F32, count=(hi - lo) // 4, offset=lo))
            elif wire == _I32:
                parts.append(np.frombuffer(buf, dtype=_F32, count=1, offset=value))
    if len(parts) == 1:
        return parts[0]  # a single packed run stays a zero-copy view
    if not parts:
        return np.zeros(0, _F32)
    return np.concatenate(parts).astype(_F32, copy=False)


def _int_values(buf: bytes, chunks: list[tuple[int, int]]) -> list[int]:
    values: list[int] = []
    for start, stop in chunks:
        for number, wire, value in _fields(buf, start, stop):
            if number != 1:
                continue
            if wire == _VARINT:
                values.append(_signed64(value))
            elif wire == _LEN:
                pos, hi = value
                while pos < hi:
                    v, pos = _read_varint(buf, pos, hi)
                    values.append(_signed64(v))
    return values


def _bytes_values(buf: bytes, chunks: list[tuple[int, int]]) -> list[bytes]:
    out: list[bytes] = []
    for start, stop in chunks:
        for number, wire, value in _fields(buf, start, stop):
            if number == 1 and wire == _LEN:
                out.append(buf[value[0] : value[1]])
    return out


def _bytes_run(buf: bytes, s: int, stop: int) -> list[bytes] | None:
    """The values of a BytesList body written as TF does (only field-1 strings); None for anything else."""
    out = []
    while s < stop:
        if buf[s] != 0x0A:
            return None
        n = buf[s + 1]
        s += 2
        if n >= 0x80:
            n, s = _read_varint(buf, s - 1, stop)
        if s + n > stop:
            return None
        out.append(buf[s : s + n])
        s += n
    return out


def _decode_canonical(buf: bytes) -> dict[str, np.ndarray | list[bytes]] | None:
    """Decodes the layout TensorFlow writes in one pass, with no generic field machinery (the hot path).

    Expects exactly one Example.features field; every map entry as key then value with a one-byte key
    length; each Feature with at most one kind field holding one packed run. Returns None on anything
    else and the generic parser takes over, so this decides speed only, never results.
    """
    end = len(buf)
    out: dict[str, np.ndarray | list[bytes]] = {}
    if end == 0:
        return out
    try:
        if buf[0] != 0x0A:
            return None
        n = buf[1]
        pos = 2
        if n >= 0x80:
            n, pos = _read_varint(buf, 1, end)
        if pos + n != end:
            return None
        while pos < end:
            # Map entry: 0A len | 0A klen key | 12 vlen | kind llen | list body
            n = buf[pos + 1]
            p = pos + 2
            if n >= 0x80:
                n, p = _read_varint(buf, pos + 1, end)
            stop = p + n
            klen = buf[p + 1]
            kstop = p + 2 + klen
            if buf[pos] != 0x0A or buf[p] != 0x0A or klen >= 0x80 or stop > end or buf[kstop] != 0x12:
                return None
            n = buf[kstop + 1]
            q = kstop + 2
            if n >= 0x80:
                n, q = _read_varint(buf, kstop + 1, end)
            if q + n != stop:
                return None
            value: np.ndarray | list[bytes] | None
            if q == stop:
                value = []  # a Feature with no kind set
            else:
                kind = buf[q]
                n = buf[q + 1]
                r = q + 2
                if n >= 0x80:
                    n, r = _read_varint(buf, q + 1, end)
                if r + n != stop:
                    return None
                if kind == 0x0A:
                    value = _bytes_run(buf, r, stop)
                elif kind == 0x12 or kind == 0x1A:
                    if r == stop:
                        value = np.zeros(0, _F32 if kind == 0x12 else np.int64)
                    else:
                        if buf[r] != 0x0A:
                            return None
                        n = buf[r + 1]
                        s = r + 2
                        if n >= 0x80:
                            n, s = _read_varint(buf, r + 1, stop)
                        if s + n != stop:
                            return None
                        if kind == 0x12:
                            if n & 3:
                                return None
                            value = np.frombuffer(buf, _F32, n >> 2, s)  # zero-copy view
                        else:
                            ints = []
                            while s < stop:
                                v, s = _read_varint(buf, s, stop)
                                ints.append(v - (1 << 64) if v >= 1 << 63 else v)
                            value = np.array(ints, np.int64)
                else:
                    return None
                if value is None:
                    return None
            out[buf[p + 2 : kstop].decode("utf-8")] = value
            pos = stop
    except (IndexError, UnicodeDecodeError, DecodeError):
        return None
    return out


def _parse_generic(buf: bytes) -> dict[str, _Feature]:
    """Parses any valid encoding of an Example into name -> _Feature."""
    features: dict[str, _Feature] = {}
    end = len(buf)
    for number, wire, value in _fields(buf, 0, end):
        if number != 1 or wire != _LEN:
            continue  # unknown fields, and known numbers with the wrong wire type, are skipped as protobuf does
        for fnum, fwire, entry in _fields(buf, value[0], value[1]):
            if fnum != 1 or fwire != _LEN:
                continue
            name = ""
            feature = _Feature()
            unknown = False
            for enum, ewire, evalue in _fields(buf, entry[0], entry[1]):
                if enum == 1 and ewire == _LEN:
                    key = buf[evalue[0] : evalue[1]]
                    try:  # every occurrence must be UTF-8, not only the last (which wins)
                        name = key.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise DecodeError(f"feature name is not UTF-8: {key!r}") from e
                elif enum == 2 and ewire == _LEN:
                    feature.merge(buf, evalue[0], evalue[1])
                else:
                    unknown = True
            if unknown:
                # protobuf (upb, TF's Python runtime) keeps a map entry with unknown fields out of the map,
                # as an unknown field of Features, after parsing it fully; do the same.
                feature.value(buf)
                continue
            if name in features:
                features[name].value(buf)  # replaced below, but protobuf still requires it well-formed
            features[name] = feature  # a repeated key replaces the earlier entry, as in protobuf maps
    return features


def _as_buffer(data: bytes | bytearray | memoryview) -> bytes:
    # np.frombuffer views need an object that owns the bytes; a bytes object is also the fastest to index.
    return data if isinstance(data, bytes) else bytes(data)


def _load_compiled_fast_path() -> Callable[[bytes], dict | None] | None:
    """The C twin of `_decode_canonical`, or None where the extension was not built (no C compiler)."""
    try:
        from trainer.data import _example_fast
    except ImportError:
        return None
    # The module has no numpy headers: it makes its arrays with these callables and dtypes.
    _example_fast._configure(np.frombuffer, np.empty, _F32, np.dtype(np.int64))
    return _example_fast.decode_canonical


# Every fast path that is available here, by name; "python" always is.
FAST_DECODERS: dict[str, Callable[[bytes], dict | None]] = {"python": _decode_canonical}
if (_compiled := _load_compiled_fast_path()) is not None:
    FAST_DECODERS["c"] = _compiled
# The one place that chooses: the compiled fast path when it was built, else the Python one.
FAST_DECODER_IMPL = "c" if "c" in FAST_DECODERS else "python"
_decode_fast = FAST_DECODERS[FAST_DECODER_IMPL]


@contextlib.contextmanager
def use_fast_decoder(impl: str) -> Iterator[None]:
    """Makes `decode_example` (and all built on it) use the fast path ``impl`` inside the block.

    For benchmarks and tests that compare the two; not thread-safe (it swaps a module global).

    Raises:
        KeyError: ``impl`` is not in `FAST_DECODERS` (e.g. "c" where the extension was not built).
    """
    global _decode_fast
    previous, _decode_fast = _decode_fast, FAST_DECODERS[impl]
    try:
        yield
    finally:
        _decode_fast = previous


def decode_example(data: bytes) -> dict[str, np.ndarray | list[bytes]]:
    """Parses a serialized `tf.train.Example`.

    Args:
        data: the serialized Example.

    Returns:
        Feature name -> value: a float32 array for a FloatList (a read-only zero-copy view over ``data``
        when it was written packed in one piece, as TensorFlow does), an int64 array for an Int64List and a
        list of bytes for a BytesList (or a Feature with no kind set).

    Raises:
        DecodeError: the bytes are not a well-formed Example.
    """
    buf = data if type(data) is bytes else _as_buffer(data)
    decoded = _decode_fast(buf)
    if decoded is None:
        decoded = {name: feature.value(buf) for name, feature in _parse_generic(buf).items()}
    return decoded


# ------------------------------------------------------------------------------------- speech records


@dataclass(frozen=True)
class SpeechRecord:
    """One decoded clip of the seed schema. ``audio`` is a read-only view over the serialized bytes."""

    audio: np.ndarray
    audio_len: int
    sample_rate: int
    duration: float
    text: str
    dataset_name: str
    sample_id: str
    extra: dict[str, str] = field(default_factory=dict)  # optional text features asked for, when present


@dataclass(frozen=True)
class SpeechMeta:
    """The cheap part of a speech record: everything but the waveform (see `peek_speech_meta`)."""

    audio_len: int
    sample_rate: int
    duration: float
    dataset_name: str
    sample_id: str


def _kind(value: np.ndarray | list[bytes]) -> str:
    if isinstance(value, list):
        return "bytes_list"
    return "float_list" if value.dtype == _F32 else "int64_list"


def _require(features: dict, name: str, kind: str) -> Any:
    value = features.get(name)
    if value is None:
        raise BadRecord("missing_feature", f"required feature {name!r} is absent")
    if _kind(value) != kind and len(value):  # an empty/unset feature is reported as holding 0 values
        raise BadRecord("missing_feature", f"feature {name!r} is a {_kind(value)}, expected a {kind}")
    return value


def _scalar(features: dict, name: str, kind: str) -> Any:
    values = _require(features, name, kind)
    if len(values) != 1:
        raise BadRecord("missing_feature", f"feature {name!r} holds {len(values)} values, expected 1")
    return values[0]


def _text(features: dict, name: str) -> str:
    raw = _scalar(features, name, "bytes_list")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord("undecodable", f"feature {name!r} is not valid UTF-8") from e


def _decode_or_bad(data: bytes) -> dict:
    try:
        return decode_example(data)
    except DecodeError as e:
        raise BadRecord("undecodable", str(e)) from e


def _meta(features: dict, expected_rate: int | None) -> SpeechMeta:
    audio_len = int(_scalar(features, "audio_len", "int64_list"))
    sample_rate = int(_scalar(features, "sample_rate", "int64_list"))
    duration = float(_scalar(features, "duration", "float_list"))
    dataset_name = _text(features, "dataset_name")
    sample_id = _text(features, "sample_id")
    if expected_rate is not None and sample_rate != expected_rate:
        raise BadRecord("wrong_sample_rate", f"sample_rate is {sample_rate}, expected {expected_rate}")
    if sample_rate <= 0:
        raise BadRecord("wrong_sample_rate", f"sample_rate is {sample_rate}")
    return SpeechMeta(audio_len, sample_rate, duration, dataset_name, sample_id)


def peek_speech_meta(data: bytes, *, expected_rate: int | None = SAMPLE_RATE) -> SpeechMeta:
    """Reads a speech record's metadata without looking at the waveform's samples.

    Cheaper than `decode_speech` (no finiteness scan); checks only the metadata features.

    Raises:
        BadRecord: undecodable bytes, a missing metadata feature or a wrong sample rate.
    """
    return _meta(_decode_or_bad(data), expected_rate)


def peek_speech_text(data: bytes) -> str:
    """The transcript of a speech record, nothing else decoded into numpy (for indexing a split).

    Raises:
        BadRecord: undecodable bytes, or a missing or non-UTF-8 ``text``.
    """
    return _text(_decode_or_bad(data), "text")


def decode_speech(
    data: bytes, *, expected_rate: int | None = SAMPLE_RATE, optional_text: tuple[str, ...] = ()
) -> SpeechRecord:
    """Decodes and validates a seed-schema speech record.

    Args:
        data: a serialized Example.
        expected_rate: the sample rate every record must have (None accepts any positive rate).
        optional_text: names of extra text features to read into ``extra`` where a record has them (e.g.
            the per-record prompt context of ``data.context_field``); absent or empty ones are left out.

    Returns:
        The record, with ``audio`` a zero-copy float32 view over ``data`` when it was written packed.

    Raises:
        BadRecord: with ``reason`` one of ``undecodable`` (not an Example, or text that is not UTF-8),
            ``missing_feature`` (absent, of the wrong kind, or not exactly one value for a scalar),
            ``audio_len_mismatch``, ``non_finite_audio`` or ``wrong_sample_rate``.
    """
    features = _decode_or_bad(data)
    meta = _meta(features, expected_rate)
    audio = _require(features, "audio", "float_list")
    if _kind(audio) != "float_list":  # only an empty feature gets here: no samples
        audio = np.zeros(0, _F32)
    text = _text(features, "text")
    if audio.size != meta.audio_len:
        raise BadRecord(
            "audio_len_mismatch", f"audio_len is {meta.audio_len} but audio has {audio.size} samples"
        )
    if not np.isfinite(audio).all():
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise BadRecord("non_finite_audio", f"{bad} of {audio.size} samples are NaN or Inf")
    extra = {}
    for name in optional_text:
        if len(features.get(name) or ()):
            extra[name] = _text(features, name)
    return SpeechRecord(
        audio=audio,
        audio_len=meta.audio_len,
        sample_rate=meta.sample_rate,
        duration=meta.duration,
        text=text,
        dataset_name=meta.dataset_name,
        sample_id=meta.sample_id,
        extra=extra,
    )
