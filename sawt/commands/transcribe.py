"""`sawt transcribe`: transcribe audio files offline with a model checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "transcribe",
        help="transcribe audio files with a checkpoint (greedy, KV cache)",
        description="Transcribe wav, flac, ogg or mp3 files (resampled to 16 kHz mono) with a model "
        "checkpoint from `sawt convert` or the trainer (a run directory uses its latest complete step). "
        "Decoding is greedy with a KV cache. Audio longer than one window (30 s, or the checkpoint's "
        "preprocessor chunk_length) is cut into overlapping windows whose transcripts are stitched. A bad "
        "file gets a one-line error on stderr and the others still run; the exit code is 1 if any failed.",
        epilog="--output json prints one object per file and line: file, text, token_ids (generated, without "
        "the prompt), prompt_token_ids (every id fed to the decoder, audio placeholders expanded; windows "
        "concatenated in order), audio_seconds, and windows (start_s, end_s, prompt_tokens, token_ids).",
    )
    parser.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files")
    parser.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="model checkpoint, trainer step dir or run dir"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        metavar="N",
        help="tokens per window at most (default: 256)",
    )
    parser.add_argument(
        "--output", choices=("text", "json"), default="text", help="text: 'FILE<TAB>TEXT' lines; json: JSONL"
    )
    parser.add_argument(
        "--tokenizer", metavar="DIR", help="tokenizer directory (default: found in the checkpoint or run dir)"
    )
    parser.add_argument("--window-s", type=float, default=None, help="window length in seconds (default: 30)")
    parser.add_argument(
        "--overlap-s", type=float, default=None, help="window overlap in seconds (default: 4)"
    )
    parser.add_argument("--instruction", default=None, help="the user instruction after the audio")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tools.transcribe import main

    return main(args)
