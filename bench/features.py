"""Feature and loader benchmarks: our log-mel vs `transformers.WhisperFeatureExtractor`, and the loader's clips/s.

`bench/data.py` (``sawt bench data``) calls `bench_logmel` and `bench_loader`; run alone with
``python -m bench.features [--quick]``. Every figure is measured in the same run as its peer.

Peers:
- log-mel: HF's ``WhisperFeatureExtractor(feature_size=128)`` on the same clip, alone (``padding="longest"``,
  i.e. no padding; what the Qwen3-Omni processor computes per utterance), in a child process with one BLAS
  thread. Figures are CPU time per clip (see `_cpu_per_call`: the sandbox is shared), medians over rounds that
  alternate ours and HF's (bench/harness.py `interleave`). Also reported: the max abs difference
  of the two log-mels over every clip timed.
- loader: the whole per-clip path of `trainer.data.loader` (ArrayRecord read, Example decode, log-mel,
  tokenise, prompt + labels, bucket padding, batch) over ten-second clips with Grain running the featuriser in
  the calling thread, the process pinned to one CPU core. The ratio puts it against HF's feature extractor
  alone on the same clip (as above): how many clips the full loader turns out per clip HF only featurises.
  Clips per second are clips per CPU-second of the pinned process.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.audio_io import SAMPLE_RATE


def _cpu_per_call(fn: Callable[[], Any], number: int) -> float:
    """Mean CPU seconds of this process per call over ``number`` calls.

    CPU time, not wall time: the sandbox is a 2-core machine shared with other jobs (load averages of 8-12),
    where wall time measures the neighbours. Every timed path here is single-threaded (ours by design, HF's
    in a child with one BLAS thread), so CPU time is the one-core cost.
    """
    t0 = time.process_time()
    for _ in range(number):
        fn()
    return (time.process_time() - t0) / number


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """Noise plus a wobbling harmonic tone: a full-band signal with speech-like dynamics."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SAMPLE_RATE) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.2 * envelope * voiced + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@contextmanager
def one_core():
    """Pins this process (all its threads, BLAS included) to one CPU core for the duration."""
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def _hf_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128)


def _hf_logmel(extractor, wave: np.ndarray) -> np.ndarray:
    out = extractor(wave, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="np")
    return out["input_features"][0]


def _hf_seconds_single_thread(seconds: float, number: int) -> float:
    """HF's extractor timed in a child process whose BLAS runs one thread (the same clip as in-process).

    One round: a warm-up call, then the mean CPU seconds per call over ``number`` calls.
    """
    import subprocess

    code = (
        "import sys, bench.features as f\n"
        "e = f._hf_extractor(); w = f._speechlike(float(sys.argv[1]), int(float(sys.argv[1])))\n"
        "f._hf_logmel(e, w)\n"
        "print(f._cpu_per_call(lambda: f._hf_logmel(e, w), int(sys.argv[2])))\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(seconds), str(number)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return float(out.stdout.strip().splitlines()[-1])


def bench_logmel(quick: bool) -> dict[str, Any]:
    """Times one clip's log-mel, ours vs HF's extractor, at 10 s (the headline), 3 s and 30 s.

    CPU time per clip, both single-threaded: ours by design, HF's in a child process with
    ``OPENBLAS_NUM_THREADS=1`` (with more BLAS threads its CPU time would include OpenBLAS's spinning).

    Returns:
        ``logmel_speedup`` (10 s clip), ``logmel_max_abs_diff`` (over every clip timed), per-length speedups
        and milliseconds per clip.
    """
    from bench.harness import interleave
    from trainer.data.audio import log_mel

    repeat, number = (3, 5) if quick else (7, 20)
    out: dict[str, Any] = {}
    waves = {seconds: _speechlike(seconds, seed=int(seconds)) for seconds in (10.0, 3.0, 30.0)}
    for seconds, wave in waves.items():
        log_mel(wave)  # warm the caches (filterbank, window)
        samples = interleave(
            {
                "ours": lambda w=wave: _cpu_per_call(lambda: log_mel(w), number),
                "hf": lambda s=seconds: _hf_seconds_single_thread(s, max(1, number // 2)),
            },
            repeat,
        )
        t_ours, t_hf = samples["ours"].median, samples["hf"].median
        tag = f"{seconds:g}s"
        out[f"logmel_speedup_{tag}"] = t_hf / t_ours
        out[f"cpu_ms_ours_{tag}"] = t_ours * 1e3
        out[f"cpu_ms_hf_{tag}"] = t_hf * 1e3
    # Parity last: HF in this process starts OpenBLAS threads whose spinning would count as our CPU time.
    extractor = _hf_extractor()
    max_diff = 0.0
    for wave in waves.values():
        ours, ref = log_mel(wave), _hf_logmel(extractor, wave)
        assert ours.shape == ref.shape, (ours.shape, ref.shape)
        max_diff = max(max_diff, float(np.abs(ours - ref).max()))
    return {"logmel_speedup": out["logmel_speedup_10s"], "logmel_max_abs_diff": max_diff, **out}


def _write_clips(root: Path, count: int, seconds: float) -> tuple[Path, Path]:
    """An ArrayRecord train split of ``count`` ten-second clips with Arabic transcripts, plus a tokenizer."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from tools.data.synth import read_sentences, tokenizer_training_text, write_tokenizer
    from trainer.data.example import encode_speech

    sentences = [s.text for s in read_sentences()]
    split = root / "data" / "train"
    split.mkdir(parents=True)
    writer = ArrayRecordWriter(str(split / "train-00000-of-00001.array_record"), "group_size:1")
    base = _speechlike(seconds, seed=0)
    for i in range(count):
        # Long transcripts (two sentences, as ten seconds of speech would have); distinct audio per clip.
        text = f"{sentences[i % len(sentences)]} {sentences[(7 * i + 3) % len(sentences)]}"
        writer.write(encode_speech(np.roll(base, 997 * i), text, "bench", f"clip-{i:06d}"))
    writer.close()
    write_tokenizer(tokenizer_training_text(sentences), root / "tokenizer")
    return root / "data", root / "tokenizer"


def bench_loader(quick: bool) -> dict[str, Any]:
    """Clips per second of the full loader path on ten-second clips, on one core.

    Returns:
        ``loader_clips_per_s_one_core``, ``loader_vs_hf_mel_only`` (loader clips/s over the clips/s of HF's
        extractor alone) and the raw figures.
    """
    import grain  # noqa: F401  (imported before timing)

    from trainer.data.config import DataConfig
    from trainer.data.loader import make_loader
    from trainer.data.text import load_tokenizer

    count, rows = (48, 8) if quick else (240, 8)
    seconds = 10.0
    with tempfile.TemporaryDirectory(prefix="sawt-bench-loader-") as tmp:
        data, tok_dir = _write_clips(Path(tmp), count, seconds)
        tok = load_tokenizer(tok_dir)
        config = DataConfig(
            dir=str(data),
            buckets=[(1000, 256)],
            min_duration=0.5,
            max_duration=10.0,
            num_threads=0,  # featurise in the calling thread: one core's worth of work, no overlap
            prefetch_batches=0,
        )
        from bench.harness import interleave

        def epoch() -> float:
            loader = make_loader(config, tok, "train", 0, 1, 0, rows, num_epochs=1)
            with one_core():
                t0 = time.process_time()
                statuses = [s for batch in loader for s in batch["meta"]["status"]]
                seconds = time.process_time() - t0
            ok = statuses.count("ok")
            if ok != count:
                raise RuntimeError(f"the loader used {ok} of {count} clips: {set(statuses)}")
            return seconds

        # The peer as in bench_logmel: CPU time in a child process with one BLAS thread.
        samples = interleave(
            {"loader": epoch, "hf": lambda: _hf_seconds_single_thread(seconds, 3 if quick else 10)},
            1 if quick else 3,
        )
        core = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    clips_per_s = count / samples["loader"].median
    t_hf = samples["hf"].median
    return {
        "loader_clips_per_s_one_core": clips_per_s,
        "loader_vs_hf_mel_only": clips_per_s * t_hf,
        "hf_mel_only_clips_per_s": 1.0 / t_hf,
        "loader_ms_per_clip": 1e3 / clips_per_s,
        "loader_clips": count,
        "loader_rows_per_batch": rows,
        "clip_seconds": seconds,
        "pinned_core": core,
    }


def main(argv: list[str] | None = None) -> int:
    from bench.standalone import run_standalone

    return run_standalone(__doc__, {"logmel": bench_logmel, "loader": bench_loader}, argv)


if __name__ == "__main__":
    sys.exit(main())
