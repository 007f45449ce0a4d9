"""Long-audio WER: cuts at silences against fixed windows, on long recordings made of demo test clips.

``make bench-longform`` after ``make demo``, i.e. ``python -m bench.longform --checkpoint build/demo/run --data
build/demo/arrayrecord --tokenizer-dir build/demo/tfrecord/tokenizer [--json FILE]``

Each long recording (``--minutes``, 2-5 min) is a run of the test split's clips in order, with a pause of
0.3-1.0 s of low noise between consecutive clips, and its reference is their transcripts joined. Both cut
modes transcribe the same recordings with the same model and `sawt transcribe`'s code path
(`tools.transcribe.Transcriber`: windows of ``--window-s``, greedy, stitched), in the same run, interleaved
recording by recording. Reported per mode: corpus WER and CER after the leaderboard normaliser, the number of
windows, and the word errors at the cut points: errors on reference words within ``--near-s`` seconds of one
of that mode's own cuts (word times spread evenly over each clip), per cut.

The demo model is trained on clips of at most 6 s (the `small` preset's buckets), so its windows are 6 s
(``--window-s``), not Qwen3-Omni's 30 s: a window longer than anything it was trained on measures the
length mismatch, not the cuts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SR = 16_000


@dataclass(frozen=True)
class LongRecording:
    wave: np.ndarray
    text: str
    word_times: list[float]  # seconds, one per reference word (after normalisation)


def build_recordings(data: str, split: str, minutes: float, count: int, seed: int) -> list[LongRecording]:
    """``count`` recordings of about ``minutes`` each from the split's clips, in shard order."""
    import grain

    from trainer.asr_metrics import normalize_arabic
    from trainer.data.audio_io import resample
    from trainer.data.example import decode_speech
    from trainer.data.shards import split_shards

    source = grain.sources.ArrayRecordDataSource([str(p) for p in split_shards(data, split)])
    rng = np.random.default_rng(seed)
    recordings = []
    index = 0
    for _ in range(count):
        pieces, words, times, t = [], [], [], 0.0
        while t < minutes * 60 and index < len(source):
            rec = decode_speech(source[index])
            index += 1
            wave = resample(np.asarray(rec.audio, np.float32), rec.sample_rate)
            clip_words = normalize_arabic(rec.text).split()
            duration = len(wave) / SR
            times += [t + (k + 0.5) * duration / max(1, len(clip_words)) for k in range(len(clip_words))]
            words += clip_words
            pieces.append(wave)
            pause = rng.uniform(0.3, 1.0)
            pieces.append((1e-3 * rng.standard_normal(int(pause * SR))).astype(np.float32))
            t += duration + pause
        if not pieces:
            break
        recordings.append(LongRecording(np.concatenate(pieces), " ".join(words), times))
    return recordings


def errors_near_cuts(ref: str, hyp: str, word_times: list[float], cuts: list[float], near_s: float) -> int:
    """Word errors (substitutions, deletions, insertions) on reference words within ``near_s`` of a cut."""
    import jiwer

    if not cuts:
        return 0
    out = jiwer.process_words(ref, hyp or "<empty>")
    cut_arr = np.asarray(cuts)

    def near(i: int) -> bool:
        i = min(max(i, 0), len(word_times) - 1)
        return bool(np.min(np.abs(cut_arr - word_times[i])) <= near_s)

    errors = 0
    for chunk in out.alignments[0]:
        if chunk.type in ("substitute", "delete"):
            errors += sum(near(i) for i in range(chunk.ref_start_idx, chunk.ref_end_idx))
        elif chunk.type == "insert":
            errors += (chunk.hyp_end_idx - chunk.hyp_start_idx) * near(chunk.ref_start_idx)
    return errors


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tools.transcribe import Transcriber
    from trainer.asr_metrics import normalize_arabic

    recordings = build_recordings(args.data, args.split, args.minutes, args.recordings, args.seed)
    if not recordings:
        raise SystemExit(f"error: no clips in the {args.split!r} split of {args.data}")
    transcribers = {
        mode: Transcriber.load(
            args.checkpoint,
            tokenizer_dir=args.tokenizer_dir,
            window_s=args.window_s,
            overlap_s=args.overlap_s,
            cut=mode,
            search_s=args.search_s,
        )
        for mode in ("silence", "fixed")
    }
    results: dict[str, dict[str, Any]] = {
        m: {"hyps": [], "windows": 0, "cuts": 0, "pause_cuts": 0, "near_errors": 0, "cut_windows": 0}
        for m in transcribers
    }
    t0 = time.monotonic()
    for k, recording in enumerate(recordings):
        for mode, transcriber in transcribers.items():  # interleaved: both modes see the same machine state
            out = transcriber.transcribe_wave(recording.wave, args.max_new_tokens)
            hyp = normalize_arabic(out["text"])
            windows = out["windows"][1:]  # each later window's start is a cut (its overlap's middle)
            cuts = [w["start_s"] + w["overlap_s"] / 2 for w in windows]
            r = results[mode]
            r["hyps"].append(hyp)
            r["windows"] += len(out["windows"])
            r["cuts"] += len(cuts)
            r["pause_cuts"] += sum(1 for w in windows if w["overlap_s"] == 0)
            r["cut_windows"] += out["cut_windows"]
            r["near_errors"] += errors_near_cuts(recording.text, hyp, recording.word_times, cuts, args.near_s)
        print(
            f"recording {k + 1}/{len(recordings)} ({len(recording.wave) / SR / 60:.1f} min) done",
            file=sys.stderr,
            flush=True,
        )
    refs = [r.text for r in recordings]
    report: dict[str, Any] = {
        "recordings": len(recordings),
        "minutes": [round(len(r.wave) / SR / 60, 2) for r in recordings],
        "ref_words": sum(len(r.split()) for r in refs),
        "window_s": args.window_s,
        "overlap_s": args.overlap_s,
        "search_s": args.search_s,
        "near_s": args.near_s,
        "seconds": round(time.monotonic() - t0, 1),
        "load_average": os.getloadavg(),
    }
    from trainer.asr_metrics import score

    for mode, r in results.items():
        scored = score(refs, r["hyps"], ["long"] * len(refs))["overall"]
        report[mode] = {
            "wer": round(scored["wer"], 4),
            "cer": round(scored["cer"], 4),
            "word_errors": scored["word_errors"],
            "windows": r["windows"],
            "cuts": r["cuts"],
            "cuts_in_pauses": r["pause_cuts"],
            "errors_near_cuts": r["near_errors"],
            "errors_per_cut": round(r["near_errors"] / max(1, r["cuts"]), 3),
            "windows_at_length_budget": r["cut_windows"],
        }
    report["wer_ratio_silence_over_fixed"] = round(
        report["silence"]["wer"] / max(1e-9, report["fixed"]["wer"]), 3
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.longform", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        default="build/demo/run",
        help="model checkpoint or trainer run directory (the demo's)",
    )
    parser.add_argument("--data", default="build/demo/arrayrecord", help="ArrayRecord root")
    parser.add_argument(
        "--tokenizer-dir", help="tokenizer directory, where none lies beside the checkpoint or in its run"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--minutes", type=float, default=3.0, help="length of each long recording")
    parser.add_argument("--recordings", type=int, default=4, help="how many long recordings")
    parser.add_argument(
        "--window-s", type=float, default=6.0, help="longest window (the demo trains on <= 6 s)"
    )
    parser.add_argument("--overlap-s", type=float, default=1.0, help="overlap at a fixed cut")
    parser.add_argument("--search-s", type=float, default=2.5, help="how far back a pause is sought")
    parser.add_argument("--near-s", type=float, default=1.0, help="'at a cut': within this many seconds")
    parser.add_argument(
        "--max-new-tokens", type=int, help="fixed budget per window (default: by duration, as transcribe)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
