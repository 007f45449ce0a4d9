"""Hand-built protobuf wire bytes for codec tests (independent of the encoder under test)."""

from __future__ import annotations


def varint(value: int, pad: int = 0) -> bytes:
    """A varint, written with ``pad`` redundant continuation bytes (non-minimal, still at most 10 bytes)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    pad = min(pad, 10 - len(out))
    if pad > 0:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


def ld(tag: int, payload: bytes, pad: int = 0) -> bytes:
    """A length-delimited field: one-byte ``tag``, the length as a varint (``pad`` as in `varint`), payload."""
    return bytes([tag]) + varint(len(payload), pad) + payload
