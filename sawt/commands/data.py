"""`sawt data`: make, convert and inspect speech data sets."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data",
        help="make, convert and inspect speech data",
        description="Make the demo corpus, convert TFRecord shards to ArrayRecord, and inspect data sets.",
    )
    data_sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = data_sub.add_parser(
        "synth",
        help="synthesise the embedded Arabic demo corpus with espeak-ng",
        description=(
            "Speak the bundled Arabic sentences with espeak-ng (varied voices, speeds and pitch), resample to "
            "16 kHz and write TFRecord shards in the seed schema under OUT/{train,validation,test}/, plus "
            "OUT/tokenizer/, a byte-level BPE tokenizer trained on the corpus with the Qwen special tokens. "
            "Test sentences are held out from train and validation."
        ),
    )
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--n", type=int, default=1500, help="number of clips to make (default: 1500)")
    synth.add_argument("--seed", type=int, default=0, help="random seed for voices and splits (default: 0)")
    synth.add_argument(
        "--workers", type=int, default=None, help="parallel espeak-ng processes (default: CPUs)"
    )
    synth.set_defaults(func=lambda args: _run("tools.data.synth", args))

    convert = data_sub.add_parser(
        "convert",
        help="convert TFRecord shards to ArrayRecord",
        description=(
            "Convert every TFRecord shard under SRC to an ArrayRecord shard under DST, keeping the split/shard "
            "layout. Records pass through byte for byte. Each output is verified and written under a temporary "
            "name first, so a re-run skips finished shards and redoes half-written ones. Bad records are "
            "counted by reason and quarantined (DST/quarantine.jsonl), or stop the run with --on-error fail. "
            "Writes DST/manifest.json with per-split, per-source statistics and DST/<split>/index.npz "
            "(per-record durations and sources) for the loader. With --num-shards N --shard-index I, N "
            "processes split the source shards between them; the last to finish writes the manifest."
        ),
    )
    convert.add_argument("--src", required=True, help="a directory of TFRecord shards, or a glob")
    convert.add_argument("--dst", required=True, help="output directory")
    convert.add_argument("--workers", type=int, default=None, help="parallel shard workers (default: CPUs)")
    convert.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        default="skip",
        help="bad records: skip (count and quarantine them) or fail (stop at the first); default: skip",
    )
    convert.add_argument(
        "--compression",
        choices=("none", "zstd", "snappy"),
        default="none",
        help="ArrayRecord compression (default: none; records are float audio that barely compresses)",
    )
    convert.add_argument(
        "--sample-rate",
        type=int,
        default=16000,
        help="sample rate every record must have; others are bad records (default: 16000)",
    )
    convert.add_argument(
        "--num-shards",
        type=int,
        default=1,
        metavar="N",
        help="split the conversion over N processes or pods (e.g. a Kubernetes Indexed Job); default: 1",
    )
    convert.add_argument(
        "--shard-index",
        type=int,
        default=0,
        metavar="I",
        help="which of the N this process is, 0 <= I < N: it converts the sorted source shards i with "
        "i %% N == I, then writes the manifest and indexes only if every source shard is finished (so the "
        "last process to finish writes them); default: 0",
    )
    convert.set_defaults(func=lambda args: _run("tools.data.convert", args))

    inspect = data_sub.add_parser(
        "inspect",
        help="print counts, hours and duration histograms",
        description="Print records, hours and a duration histogram per split and source, from an ArrayRecord "
        "directory or its manifest.json.",
    )
    inspect.add_argument("path", help="ArrayRecord directory or manifest.json")
    inspect.add_argument(
        "--scan",
        action="store_true",
        help="read every record of the ArrayRecord directory instead of trusting its manifest.json",
    )
    inspect.add_argument("--json", action="store_true", help="print the statistics as JSON")
    inspect.set_defaults(func=lambda args: _run("tools.data.inspect", args))


def _run(module: str, args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(module).main(args)
