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
        "preprocessor chunk_length) is cut into windows, in a pause near each window's end where there is "
        "one, else at a fixed length with --overlap-s of shared audio, and the windows' transcripts are "
        "stitched. --language words the instruction (ar, en, ar-en for code-switched Arabic/English) and "
        "--prompt is given to the model as context (a glossary, names, earlier text), as the server's "
        "language and prompt fields are. A bad file gets a one-line error on stderr and the others still "
        "run; the exit code is 1 if any failed.",
        epilog="--output json prints one object per file and line: file, text, token_ids (generated, without "
        "the prompt), prompt_token_ids (every id fed to the decoder, audio placeholders expanded; windows "
        "concatenated in order), audio_seconds, and windows (start_s, end_s, overlap_s with the previous "
        "window, segment [start, end] of the source audio its text stands for, prompt_tokens, token_ids).",
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
    parser.add_argument(
        "--instruction", default=None, help="the user instruction after the audio when no --language is given"
    )
    parser.add_argument(
        "--language",
        default=None,
        help="language of the audio: ar, en or ar-en (code-switched); words the instruction",
    )
    parser.add_argument(
        "--prompt",
        default=None,
        metavar="TEXT",
        help="context for the model: a glossary, names, earlier text",
    )
    parser.add_argument(
        "--cut",
        choices=("silence", "fixed"),
        default="silence",
        help="cut long audio in pauses (fixed cuts where there are none) or every window (default: silence)",
    )
    parser.add_argument(
        "--search-s",
        type=float,
        default=5.0,
        help="how far back from a window's end a pause is sought (default: 5)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tools.transcribe import main

    return main(args)
