"""`sawt transcribe`: transcribe audio files offline with a model checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "transcribe",
        help="transcribe audio files with a checkpoint (greedy, KV cache)",
        description="Transcribe wav, flac, ogg or mp3 files (resampled to 16 kHz mono) with a model "
        "checkpoint from `sawt convert` or the trainer (a run directory uses its best step by validation WER, "
        "else its latest), prompted exactly as its run trained (tokenizer and prompt wording from RUN/model/). "
        "Decoding is greedy with a KV cache; each window's length budget follows its duration, and a window "
        "cut at it is reported on stderr. Audio longer than one window (30 s) is cut into windows, in a pause near each window's end where there is "
        "one, else at a fixed length with --overlap-s of shared audio, and the windows' transcripts are "
        "stitched. --language words the instruction (ar, en, ar-en for code-switched Arabic/English) and "
        "--prompt is given to the model as context (a glossary, names, earlier text), as the server's "
        "language and prompt fields are. A bad file gets a one-line error on stderr and the others still "
        "run; the exit code is 1 if any failed.",
        epilog="--output json prints one object per file and line: file, text, token_ids (generated, without "
        "the prompt), prompt_token_ids (every id fed to the decoder, audio placeholders expanded; windows "
        "concatenated in order), audio_seconds, cut_windows, and windows (start_s, end_s, overlap_s with the "
        "previous window, segment [start, end] of the source audio its text stands for, prompt_tokens, "
        "token_ids, max_new_tokens (its budget), cut).",
    )
    parser.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files")
    parser.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="model checkpoint, trainer step dir or run dir"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="a fixed generation budget per window (default: from the window's duration and the transcript "
        "rate measured when the checkpoint's run trained, at most --max-length-cap)",
    )
    parser.add_argument(
        "--max-length-cap",
        type=int,
        default=448,
        metavar="N",
        help="most tokens the duration-based budget gives a window (default: 448)",
    )
    parser.add_argument(
        "--output", choices=("text", "json"), default="text", help="text: 'FILE<TAB>TEXT' lines; json: JSONL"
    )
    parser.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="tokenizer directory (default: beside the checkpoint, or its run directory's model/)",
    )
    parser.add_argument("--window-s", type=float, default=None, help="window length in seconds (default: 30)")
    parser.add_argument(
        "--overlap-s", type=float, default=None, help="window overlap in seconds (default: 4)"
    )
    parser.add_argument(
        "--instruction",
        default=None,
        help="the user instruction after the audio when no --language is given (default: the one the run "
        "trained on)",
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
