"""`sawt batch-infer`: transcribe an ArrayRecord split, resumably, sharded over processes; WER/CER report."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "batch-infer",
        help="transcribe an ArrayRecord split and score it (WER/CER per source)",
        description=(
            "Transcribe every record of an ArrayRecord split with the serving engine (continuous batching) and "
            "write OUT/predictions-<i>-of-<n>.jsonl (sample_id, dataset_name, reference, hypothesis, "
            "audio_seconds, tokens). Each line is on disk before the next is counted; a re-run skips ids already "
            "written. Process i of n takes records i, i+n, ... (set by --process-index/--num-processes, the "
            "SAWT_PROCESS_ID/SAWT_NUM_PROCESSES environment, or --local-processes). Ends with OUT/report.json "
            "and OUT/report.md: WER and CER, overall and per source, after Arabic normalisation."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="model checkpoint directory (or trainer run dir)")
    parser.add_argument("--data", required=True, help="a split directory of *.array_record, or the data root")
    parser.add_argument(
        "--split", default=None, help="split under --data (e.g. test) when --data is the root"
    )
    parser.add_argument("--out", required=True, help="output directory (predictions, report)")
    parser.add_argument("--local-processes", type=int, default=None, help="run N local processes (shards)")
    parser.add_argument(
        "--process-index",
        type=int,
        default=int(os.environ.get("SAWT_PROCESS_ID", 0)),
        help="this process's shard (default: $SAWT_PROCESS_ID or 0)",
    )
    parser.add_argument(
        "--num-processes",
        type=int,
        default=int(os.environ.get("SAWT_NUM_PROCESSES", 1)),
        help="number of shards (default: $SAWT_NUM_PROCESSES or 1)",
    )
    parser.add_argument("--max-batch", type=int, default=8, help="decode slots (default: 8)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=448,
        help="cap of each window's generation budget, which follows its duration (default: 448)",
    )
    parser.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        help="shard the weights over this many local chips (4 on a v4-8 host; default: 1)",
    )
    parser.add_argument("--window-s", type=float, default=30.0, help="audio per model window (default: 30)")
    parser.add_argument("--overlap-s", type=float, default=4.0, help="window overlap (default: 4)")
    parser.add_argument(
        "--cut",
        choices=("silence", "fixed"),
        default="silence",
        help="where long audio is cut (default: silence)",
    )
    parser.add_argument("--language", default=None, help="language of every record: ar, en or ar-en")
    parser.add_argument(
        "--prompt", default=None, metavar="TEXT", help="context given to the model for every record"
    )
    parser.add_argument(
        "--language-field", default=None, metavar="FEATURE", help="text feature with a record's own language"
    )
    parser.add_argument(
        "--context-field", default=None, metavar="FEATURE", help="text feature with a record's own context"
    )
    parser.add_argument(
        "--report-timeout", type=float, default=24 * 3600.0, help="how long process 0 waits for the others"
    )
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from core.errors import UsageError

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every restore step at INFO
    from inference_server import batch_infer
    from trainer.data.shards import find_shards
    from trainer.data.text import PromptError, PromptStyle

    try:
        PromptStyle().instruction_for(args.language)  # refuse a bad --language before loading anything
    except PromptError as err:
        raise UsageError(f"--language: {err}") from None
    fields = batch_infer.PromptFields(args.language, args.prompt, args.language_field, args.context_field)
    out = Path(args.out)
    if args.local_processes is not None:
        if args.local_processes < 1:
            raise UsageError("--local-processes must be at least 1")
        argv = ["--checkpoint", args.checkpoint, "--data", args.data, "--out", args.out]
        argv += ["--split", args.split] if args.split else []
        argv += ["--max-batch", str(args.max_batch), "--max-new-tokens", str(args.max_new_tokens)]
        argv += ["--window-s", str(args.window_s), "--overlap-s", str(args.overlap_s)]
        argv += ["--tensor-parallel", str(args.tensor_parallel), "--cut", args.cut]
        for flag, value in (("--language", args.language), ("--prompt", args.prompt),
                            ("--language-field", args.language_field), ("--context-field", args.context_field)):  # fmt: skip
            argv += [flag, value] if value is not None else []
        code = batch_infer.launch_local(argv, args.local_processes)
        if code != 0:
            return code
        batch_infer.print_summary(batch_infer.write_report(out))
        return 0
    if not 0 <= args.process_index < args.num_processes:
        raise UsageError(f"--process-index {args.process_index} not in [0, {args.num_processes})")
    import time

    started = time.time()
    find_shards(args.data, args.split)  # fail fast on a bad path
    batch_infer.run_process(
        args.checkpoint, args.data, out, split=args.split, process_index=args.process_index,
        num_processes=args.num_processes, max_batch=args.max_batch, max_new_tokens=args.max_new_tokens,
        window_s=args.window_s, overlap_s=args.overlap_s, tensor_parallel=args.tensor_parallel, fields=fields,
        cut=args.cut,
    )  # fmt: skip
    if args.no_report or args.process_index != 0:
        return 0
    batch_infer.wait_for_markers(out, args.num_processes, args.report_timeout, since=started - 5)
    batch_infer.print_summary(batch_infer.write_report(out))
    return 0
