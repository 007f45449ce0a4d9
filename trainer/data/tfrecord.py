"""TFRecord reader and writer (no TensorFlow), with masked CRC32C checks on every length and payload.

A TFRecord file is a sequence of records, each laid out as

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | payload | uint32 masked_crc32c(payload)

where ``masked_crc32c(x) = rotate_right(crc32c(x), 15) + 0xA282EAD8 (mod 2**32)``. The CRC is Castagnoli's
(CRC-32C), computed by the C-backed ``google_crc32c`` package; a pure-Python table version is kept for
environments without it and for cross-checking in the tests.

Errors name the file and the byte offset of the record that failed (`TFRecordError`). A bad payload CRC
under a good length still lets a reader continue at the next record; a bad length CRC or a truncated file
does not (nothing after it can be located), which `scan_tfrecord` reports as the rest of the file lost.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF

# Reasons a TFRecord cannot be read. Only bad_data_crc is recoverable (the length still locates the next record).
TFRECORD_REASONS = ("bad_length_crc", "bad_data_crc", "truncated")


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c_python(data: bytes) -> int:
    """CRC-32C of ``data`` in pure Python (slow: ~1 MB/s; the fallback and the tests' reference)."""
    crc = _U32
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


try:
    import google_crc32c as _gcrc

    def crc32c(data: bytes) -> int:
        """CRC-32C (Castagnoli) of ``data``."""
        return _gcrc.value(data)

    CRC32C_IMPLEMENTATION = f"google_crc32c ({_gcrc.implementation})"
except ImportError:  # pragma: no cover - exercised only where the pinned dependency is missing
    crc32c = crc32c_python
    CRC32C_IMPLEMENTATION = "pure python (slow)"


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C TFRecord stores (masking keeps CRCs of data containing CRCs well distributed)."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


class TFRecordError(Exception):
    """A TFRecord file that cannot be read past ``offset`` (or, for bad_data_crc, one unusable record).

    Attributes:
        path: the file.
        offset: byte offset of the start of the failing record (in the uncompressed stream).
        reason: one of TFRECORD_REASONS.
        detail: a human-readable explanation.
    """

    def __init__(self, path: str | Path, offset: int, reason: str, detail: str):
        super().__init__(f"{path}: byte offset {offset}: {reason}: {detail}")
        self.path = str(path)
        self.offset = offset
        self.reason = reason
        self.detail = detail

    @property
    def recoverable(self) -> bool:
        """True when the next record can still be found (only the payload CRC was wrong)."""
        return self.reason == "bad_data_crc"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open_stream(path: Path):
    """Opens a TFRecord file; GZIP-compressed files (TF's compression_type="GZIP") are read transparently."""
    if _is_gzip(path):
        return gzip.open(path, "rb"), None
    return open(path, "rb"), path.stat().st_size


@dataclass(frozen=True)
class ScanEntry:
    """One step of `scan_tfrecord` at ``offset``: a good record (``payload``, no ``error``) or a failure.

    A bad_data_crc failure still carries the suspect ``payload`` (for quarantine); the others carry none.
    """

    offset: int
    payload: bytes | None = None
    error: TFRecordError | None = None


def scan_tfrecord(path: str | Path, *, verify: bool = True) -> Iterator[ScanEntry]:
    """Walks a TFRecord file record by record, reporting failures instead of raising them.

    A bad payload CRC yields an error entry and the walk continues with the next record. A bad length CRC
    or a truncated record yields an error entry and ends the walk: the rest of the file cannot be located.
    The error's detail then says how many bytes were not read.

    Args:
        path: the TFRecord file (uncompressed or GZIP).
        verify: check the CRCs (False trusts the file: faster, for files just verified).

    Yields:
        ScanEntry per record, in file order.
    """
    path = Path(path)
    stream, size = _open_stream(path)
    with stream:
        offset = 0
        while True:
            try:
                header = stream.read(_HEADER.size)
            except _STREAM_ERRORS as e:
                yield ScanEntry(offset, error=_corrupt_stream(path, offset, e))
                return
            if not header:
                return
            if len(header) < _HEADER.size:
                yield ScanEntry(offset, error=_truncated(path, offset, size, len(header), "record header"))
                return
            length, length_crc = _HEADER.unpack(header)
            if verify and masked_crc32c(header[:8]) != length_crc:
                yield ScanEntry(
                    offset,
                    error=TFRecordError(
                        path,
                        offset,
                        "bad_length_crc",
                        f"length field CRC mismatch (stored {length_crc:#010x}, computed "
                        f"{masked_crc32c(header[:8]):#010x}); {_rest(size, offset)} not read",
                    ),
                )
                return
            need = length + _FOOTER.size
            if size is not None and offset + _HEADER.size + need > size:
                # Checked before reading, so a corrupt huge length never allocates memory.
                yield ScanEntry(
                    offset,
                    error=_truncated(
                        path, offset, size, size - offset, f"record of {length} bytes (file ends first)"
                    ),
                )
                return
            try:
                body = stream.read(need)
            except _STREAM_ERRORS as e:
                yield ScanEntry(offset, error=_corrupt_stream(path, offset, e))
                return
            if len(body) < need:
                yield ScanEntry(
                    offset,
                    error=_truncated(
                        path, offset, size, _HEADER.size + len(body), f"record of {length} bytes"
                    ),
                )
                return
            payload = body[:length]
            (data_crc,) = _FOOTER.unpack_from(body, length)
            record_offset = offset
            offset += _HEADER.size + need
            if verify and masked_crc32c(payload) != data_crc:
                yield ScanEntry(
                    record_offset,
                    payload=payload,
                    error=TFRecordError(
                        path,
                        record_offset,
                        "bad_data_crc",
                        f"payload CRC mismatch on a {length}-byte record (stored {data_crc:#010x}, "
                        f"computed {masked_crc32c(payload):#010x})",
                    ),
                )
                continue
            yield ScanEntry(record_offset, payload=payload)


# What a damaged GZIP stream raises while reading (a plain file raises none of these but OSError).
_STREAM_ERRORS = (OSError, EOFError, zlib.error)


def _corrupt_stream(path: Path, offset: int, err: Exception) -> TFRecordError:
    return TFRecordError(path, offset, "truncated", f"cannot read on: {type(err).__name__}: {err}")


def _rest(size: int | None, offset: int) -> str:
    return "the rest of the file" if size is None else f"{size - offset} bytes to the end of the file"


def _truncated(path: Path, offset: int, size: int | None, have: int, what: str) -> TFRecordError:
    return TFRecordError(path, offset, "truncated", f"file ends inside a {what}: {have} bytes left")


def iter_tfrecord(path: str | Path, *, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yields (byte offset, payload) for every record of a TFRecord file.

    Args:
        path: the TFRecord file (uncompressed or GZIP).
        verify: check the masked CRC32C of every length and payload.

    Raises:
        TFRecordError: at the first bad CRC, bad length or truncation, naming the file and the offset.
    """
    for entry in scan_tfrecord(path, verify=verify):
        if entry.error is not None:
            raise entry.error
        yield entry.offset, entry.payload


def count_tfrecord(path: str | Path) -> int:
    """Number of records in a TFRecord file, found from the length fields alone (payloads are skipped).

    Raises:
        TFRecordError: a bad length CRC or a truncated file.
    """
    path = Path(path)
    stream, size = _open_stream(path)
    count = 0
    with stream:
        offset = 0
        while True:
            header = stream.read(_HEADER.size)
            if not header:
                return count
            if len(header) < _HEADER.size:
                raise _truncated(path, offset, size, len(header), "record header")
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise TFRecordError(path, offset, "bad_length_crc", "length field CRC mismatch")
            need = length + _FOOTER.size
            if size is not None:
                if offset + _HEADER.size + need > size:
                    raise _truncated(path, offset, size, size - offset, f"record of {length} bytes")
                stream.seek(need, os.SEEK_CUR)
            elif len(stream.read(need)) < need:
                raise _truncated(path, offset, size, 0, f"record of {length} bytes")
            offset += _HEADER.size + need
            count += 1


def encode_record(payload: bytes) -> bytes:
    """The framed bytes of one TFRecord record (header, payload and footer)."""
    header = struct.pack("<Q", len(payload))
    return (
        header + _FOOTER.pack(masked_crc32c(header)) + bytes(payload) + _FOOTER.pack(masked_crc32c(payload))
    )


class TFRecordWriter:
    """Writes a TFRecord file atomically: records go to a temporary file renamed into place on close.

    A crash or an exception inside the ``with`` block leaves no file at ``path`` (the temporary file is
    removed), so a half-written shard is never mistaken for a finished one.

    Example:
        with TFRecordWriter("train/shard-00000.tfrecord") as writer:
            writer.write(encode_speech(wave, text, "demo", "0001"))
    """

    def __init__(self, path: str | Path, *, gzip_level: int | None = None):
        """Opens the writer.

        Args:
            path: the final file name.
            gzip_level: write GZIP-compressed records (TF's compression_type="GZIP") at this level;
                None (the default) writes uncompressed.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._raw = os.fdopen(fd, "wb")
        self._file = (
            self._raw
            if gzip_level is None
            else gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=gzip_level)
        )
        self.count = 0
        self._closed = False

    def write(self, payload: bytes) -> None:
        """Appends one record."""
        self._file.write(encode_record(payload))
        self.count += 1

    def close(self) -> None:
        """Flushes, fsyncs and renames the file into place."""
        if self._closed:
            return
        self._closed = True
        if self._file is not self._raw:
            self._file.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Discards everything written; ``path`` is left untouched."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._file is not self._raw:
                self._file.close()
            self._raw.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
