"""Data codec benchmarks: Example decode vs protobuf, and `sawt data convert` vs `cp` of the same bytes.

`bench/data.py` (``sawt bench data``) calls `bench_example_decode` and `bench_convert`; run alone with
``python -m bench.codec [--quick]``. Every figure is a ratio against a peer measured in the same run.

Peers:
- Example decode: google.protobuf (the upb C runtime, protobuf 7) parsing the same bytes with TF's
  example.proto field numbers (tools/dev/example_proto.py), then every feature into numpy / bytes, which is what
  our `decode_example` returns. Two variants: the buffer fast path (``np.asarray`` on the repeated field,
  which protobuf 7 supports) and element by element (``np.fromiter``, what code written for older protobuf
  versions, or for other runtimes, gets).
- Convert: ``cp -r`` of the source shards (the cheapest way to move the bytes at all).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.audio_io import SAMPLE_RATE


def interleaved_per_call(
    sides: dict[str, Callable[[], Any]], rounds: int, number: int
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per call of each side, the sides interleaved round by round.

    Each round runs every side ``number`` times in turn (bench/harness.py `interleave`), so a burst of
    load on the shared machine hits both sides. CPU time (this process, user + system) leaves out the time
    other processes take the core away, so it is the steadier figure there; the median over rounds is
    the headline, not the best round.
    """
    from bench.harness import interleave

    wall: dict[str, list[float]] = {name: [] for name in sides}

    def timed(name: str, fn: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(number):
                fn()
            wall[name].append((time.perf_counter() - w0) / number)
            return (time.process_time() - c0) / number

        return run

    cpu = interleave({name: timed(name, fn) for name, fn in sides.items()}, rounds)
    return {name: (float(np.median(wall[name])), cpu[name].median) for name in sides}


def _clip_records(seconds: float, count: int, seed: int = 0) -> list[bytes]:
    from trainer.data.example import encode_speech

    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    return [
        encode_speech(
            (0.1 * rng.standard_normal(n)).astype(np.float32), "نص عربي للاختبار", "bench", f"clip-{i:06d}"
        )
        for i in range(count)
    ]


def _protobuf_to_numpy(pb, data: bytes, elementwise: bool) -> dict:
    msg = pb.Example.FromString(data)
    out = {}
    for name, feat in msg.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "float_list":
            v = feat.float_list.value
            out[name] = np.fromiter(v, np.float32, len(v)) if elementwise else np.asarray(v, np.float32)
        elif kind == "int64_list":
            v = feat.int64_list.value
            out[name] = np.fromiter(v, np.int64, len(v)) if elementwise else np.asarray(v, np.int64)
        else:
            out[name] = list(feat.bytes_list.value)
    return out


def bench_example_decode(quick: bool) -> dict[str, Any]:
    """Times decoding a 10 s clip's Example: ours vs protobuf into numpy.

    Two regimes: ``hot`` decodes the same record again and again (its bytes stay in CPU cache, the best
    case for a copying parser); ``stream`` walks through distinct records (64 MB of them, as a loader
    does), so a parser that copies the audio pays for memory traffic.

    ``decode_example`` runs whichever fast path this install has (``example_decode_impl``: "c", the
    compiled one, or "python" without a C compiler); ``example_decode_speedup_python`` is the Python fast
    path's figure, measured in the same run for reference.

    Returns:
        ``example_decode_speedup``: the headline, stream regime, CPU time, vs protobuf's fast path; the same
        in wall-clock time (``_wall``, inflated for the peer on a loaded machine), for the hot regime and
        vs element-by-element protobuf; and the raw microseconds per record.
    """
    from tools.dev.example_proto import example_classes
    from trainer.data.example import FAST_DECODER_IMPL, decode_example, decode_speech, use_fast_decoder

    pb = example_classes()
    seconds = 10.0
    records = _clip_records(seconds, 8 if quick else 100)
    data = records[0]
    # Same output both ways (a benchmark of different results would be meaningless).
    ours, theirs = decode_example(data), _protobuf_to_numpy(pb, data, elementwise=False)
    assert np.array_equal(ours["audio"], theirs["audio"]) and ours["text"] == theirs["text"]

    repeat, number = (3, 50) if quick else (7, 300)
    hot = interleaved_per_call(
        {
            "ours": lambda: decode_example(data),
            "speech": lambda: decode_speech(data),
            "protobuf": lambda: _protobuf_to_numpy(pb, data, False),
        },
        repeat,
        number,
    )
    hot_ours, hot_speech, hot_pb = hot["ours"], hot["speech"], hot["protobuf"]
    el_number = 3 if quick else 10
    hot_el = interleaved_per_call(
        {"ours": lambda: decode_example(data), "protobuf": lambda: _protobuf_to_numpy(pb, data, True)},
        2 if quick else 3,
        el_number,
    )
    hot_pb_el = hot_el["protobuf"]

    def walk(fn: Callable[[bytes], Any]) -> Callable[[], None]:
        def run() -> None:
            for r in records:
                fn(r)

        return run

    n = len(records)

    def python_fast_path() -> None:
        # For reference: the pure-Python fast path (what a machine without a C compiler runs).
        with use_fast_decoder("python"):
            walk(decode_example)()

    stream = interleaved_per_call(
        {
            "ours": walk(decode_example),
            "protobuf": walk(lambda r: _protobuf_to_numpy(pb, r, False)),
            "python": python_fast_path,
        },
        repeat,
        1,
    )
    stream_ours, stream_pb, stream_py = ([t / n for t in stream[k]] for k in ("ours", "protobuf", "python"))
    wall, cpu = 0, 1
    return {
        "example_decode_speedup": stream_pb[cpu] / stream_ours[cpu],
        "example_decode_impl": FAST_DECODER_IMPL,
        "example_decode_speedup_python": stream_pb[cpu] / stream_py[cpu],
        "example_decode_speedup_wall": stream_pb[wall] / stream_ours[wall],
        "example_decode_speedup_hot": hot_pb[cpu] / hot_ours[cpu],
        "example_decode_speedup_hot_wall": hot_pb[wall] / hot_ours[wall],
        "example_decode_speedup_vs_elementwise": hot_pb_el[cpu] / hot_ours[cpu],
        "clip_seconds": seconds,
        "record_bytes": len(data),
        "stream_records": n,
        "us_ours_decode_example_stream_cpu": stream_ours[cpu] * 1e6,
        "us_ours_python_fast_path_stream_cpu": stream_py[cpu] * 1e6,
        "us_protobuf_stream_cpu": stream_pb[cpu] * 1e6,
        "us_ours_decode_example_stream_wall": stream_ours[wall] * 1e6,
        "us_protobuf_stream_wall": stream_pb[wall] * 1e6,
        "us_ours_decode_example_hot_cpu": hot_ours[cpu] * 1e6,
        "us_ours_decode_speech_hot_cpu": hot_speech[cpu] * 1e6,
        "us_protobuf_hot_cpu": hot_pb[cpu] * 1e6,
        "us_protobuf_elementwise_hot_cpu": hot_pb_el[cpu] * 1e6,
    }


def _sawt_data(argv: list[str]) -> int:
    """``sawt data ARGV`` in this process, its flags and defaults as the CLI parses them.

    Through `sawt.commands.data` alone, not `sawt.cli`: the CLI loads `sawt bench`, which loads this module.
    """
    import argparse

    from sawt.commands import data

    parser = argparse.ArgumentParser(prog="sawt")
    data.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *argv])
    return int(args.func(args) or 0)


def bench_convert(quick: bool) -> dict[str, Any]:
    """Times `sawt data convert` against ``cp -r`` of the same TFRecord bytes.

    Returns:
        ``convert_vs_cp_ratio`` (convert seconds / cp seconds; lower is better, 1.0 would be I/O-bound),
        both times and the bytes moved. The converter runs with its CLI defaults (workers = CPUs, but
        in-process below 128 MiB of source per worker).
    """
    from trainer.data.tfrecord import TFRecordWriter

    shards, per_shard, seconds = (2, 12, 5.0) if quick else (4, 40, 10.0)
    with tempfile.TemporaryDirectory(prefix="sawt-bench-convert-") as tmp:
        root = Path(tmp)
        for s in range(shards):
            split = "train" if s else "validation"
            with TFRecordWriter(root / "src" / split / f"part-{s:05d}.tfrecord") as w:
                for r in _clip_records(seconds, per_shard, seed=s):
                    w.write(r)
        nbytes = sum(p.stat().st_size for p in (root / "src").rglob("*.tfrecord"))
        from bench.harness import interleave

        def convert() -> float:
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # its report is not the benchmark's output
                rc = _sawt_data(["convert", "--src", str(root / "src"), "--dst", str(root / "dst")])
            seconds = time.perf_counter() - t0
            if rc != 0:
                raise RuntimeError(f"sawt data convert failed with exit code {rc}")
            shutil.rmtree(root / "dst")
            return seconds

        def cp_timed() -> float:
            t0 = time.perf_counter()
            subprocess.run(["cp", "-r", str(root / "src"), str(root / "cp")], check=True)
            seconds = time.perf_counter() - t0
            shutil.rmtree(root / "cp")
            return seconds

        samples = interleave({"cp": cp_timed, "convert": convert}, 1 if quick else 3)
    cp_s, convert_s = samples["cp"].median, samples["convert"].median
    return {
        "convert_vs_cp_ratio": convert_s / cp_s,
        "convert_vs_cp_ratio_rounds": [
            c / p for c, p in zip(samples["convert"].seconds, samples["cp"].seconds, strict=True)
        ],
        "convert_seconds": convert_s,
        "cp_seconds": cp_s,
        "bytes": nbytes,
        "records": shards * per_shard,
        "convert_mb_per_s": nbytes / convert_s / 1e6,
        "cp_mb_per_s": nbytes / cp_s / 1e6,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    from bench.standalone import run_standalone

    return run_standalone(__doc__, {"example_decode": bench_example_decode, "convert": bench_convert}, argv)


if __name__ == "__main__":
    sys.exit(main())
