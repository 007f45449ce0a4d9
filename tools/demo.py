"""`make demo` / `python -m tools.demo --out DIR`: the whole system end to end on the synthetic Arabic corpus.

The demo is a list of named steps (`STEPS`), each running a `sawt` subcommand through the same entry point as
the command line (`sawt.cli.main`), so the demo exercises exactly what a user types. Each step prints its
command first. Later parts of the system append their steps (train, evaluate, serve, render...) with
`cli_step`.

Layout under ``--out`` (the presets' defaults point here for ``--out build/demo``):

    tfrecord/       `sawt data synth` output: {train,validation,test}/*.tfrecord, tokenizer/, synth.json
    arrayrecord/    `sawt data convert` output: the same splits as ArrayRecord + index.npz, manifest.json

Re-running is cheap: synthesis is skipped when ``tfrecord/synth.json`` shows the same ``--n`` and ``--seed``
(``--fresh`` starts over), and the converter resumes shard by shard.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Demo:
    """What every step can see: the parsed options and the demo's directories."""

    args: argparse.Namespace

    @property
    def out(self) -> Path:
        return Path(self.args.out)

    @property
    def tfrecord(self) -> Path:
        return self.out / "tfrecord"

    @property
    def arrayrecord(self) -> Path:
        return self.out / "arrayrecord"

    @property
    def tokenizer(self) -> Path:
        return self.tfrecord / "tokenizer"


@dataclass(frozen=True)
class Step:
    """One named demo step: ``run(demo)`` returns an exit code (0 = go on)."""

    name: str
    about: str
    run: Callable[[Demo], int]


def run_sawt(argv: list[str]) -> int:
    """Runs one `sawt` command in this process, printing it first."""
    from sawt.cli import main

    print(f"$ sawt {shlex.join(argv)}", flush=True)
    return main(argv)


def cli_step(name: str, about: str, argv: Callable[[Demo], list[str] | None]) -> Step:
    """A step that runs ``sawt <argv(demo)>``; ``argv`` may return None to skip (it says why itself)."""

    def run(demo: Demo) -> int:
        command = argv(demo)
        return 0 if command is None else run_sawt(command)

    return Step(name, about, run)


def _synth_argv(demo: Demo) -> list[str] | None:
    summary = demo.tfrecord / "synth.json"
    if summary.is_file():
        done = json.loads(summary.read_text())
        if (done.get("n"), done.get("seed")) == (demo.args.n, demo.args.seed):
            print(
                f"synth: {demo.tfrecord} already holds this corpus (n={demo.args.n}, seed={demo.args.seed})"
            )
            return None
        raise SystemExit(
            f"demo: {demo.tfrecord} holds a corpus with n={done.get('n')}, seed={done.get('seed')}; "
            "pass --fresh to replace it, or another --out"
        )
    return [
        "data",
        "synth",
        "--out",
        str(demo.tfrecord),
        "--n",
        str(demo.args.n),
        "--seed",
        str(demo.args.seed),
    ]


def _load_batch(demo: Demo) -> int:
    """Loads one training batch with the Grain loader and shows what the model will see."""
    from trainer.data.config import DataConfig
    from trainer.data.loader import make_loader
    from trainer.data.text import load_tokenizer

    tok = load_tokenizer(demo.tokenizer)
    config = DataConfig(dir=str(demo.arrayrecord))
    print(f"loader: {config.dir} train split, buckets (audio_frames, text_tokens) {config.buckets}")
    batch = next(make_loader(config, tok, "train", 0, 1, demo.args.seed, 4))
    for key, value in batch.items():
        if key != "meta":
            print(f"  {key:<13} {value.dtype!s:<8} {list(value.shape)}")
    n = int(batch["token_mask"][0].sum())
    ids = batch["input_ids"][0, :n]
    supervised = batch["targets"][0][batch["loss_mask"][0] > 0]
    print(
        f"  row 0: {batch['meta']['sample_id'][0]} ({batch['meta']['dataset_name'][0]}, "
        f"{batch['meta']['duration'][0]:.2f} s, {batch['audio_tokens'][0]} audio tokens)"
    )
    shown = tok.decode(ids, skip_special_tokens=False)
    shown = re.sub(r"(<\|audio_pad\|>)+", lambda m: f"<|audio_pad|>x{m.group(0).count('<')}", shown)
    print(f"  prompt + target: {shown!r}")
    print(f"  loss on:         {tok.decode(supervised, skip_special_tokens=False)!r}")
    return 0


STEPS: list[Step] = [
    cli_step(
        "synth", "speak the Arabic sentences with espeak-ng into TFRecord shards + tokenizer", _synth_argv
    ),
    cli_step(
        "convert",
        "convert the TFRecord shards to ArrayRecord (+ manifest, split indexes)",
        lambda d: ["data", "convert", "--src", str(d.tfrecord), "--dst", str(d.arrayrecord)],
    ),
    cli_step(
        "inspect",
        "print counts, hours and duration histograms",
        lambda d: ["data", "inspect", str(d.arrayrecord)],
    ),
    Step("load", "load one training batch with the Grain loader (log-mel, prompt, labels)", _load_batch),
]


# ------------------------------------------------------------------ training steps (trainer)


def _train_argv(demo: Demo) -> list[str]:
    """Train the `small` preset on the demo corpus with 2 local processes; WER on the held-out test split.

    The run evaluates at step 0 (WER before) and at the end (WER after) on the test split, whose sentences
    and two of whose voices never occur in training. Re-running resumes the same run directory.
    """
    return [
        "train",
        "--config",
        "small",
        "--run-dir",
        str(demo.out / "run"),
        "--local-processes",
        "2",
        f"data.dir={demo.arrayrecord}",
        f"tokenizer.dir={demo.tokenizer}",
        "eval.split=test",
        "eval.at_start=true",
        "metrics.port=0",
    ]


def _report(demo: Demo) -> int:
    """Loss and WER curves (PNG), report.md and summary.json under OUT/report."""
    from trainer.report import write_report

    path = write_report(demo.out / "run", demo.out / "report")
    summary = json.loads(path.read_text())
    print(
        f"report: {path.parent / 'report.md'}; WER before {100 * summary['wer_before']:.1f}%, "
        f"after {100 * summary['wer_after']:.1f}% (test split, held-out sentences)"
    )
    return 0


STEPS += [
    cli_step(
        "train",
        "train the small model (2 local processes) with WER on the test split before/after",
        _train_argv,
    ),
    Step("report", "write loss/WER curves, report.md and summary.json (wer_before, wer_after)", _report),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description="Run the sawt demo end to end on a synthetic Arabic corpus. Steps: "
        + "; ".join(f"{s.name}: {s.about}" for s in STEPS),
    )
    parser.add_argument("--out", default="build/demo", help="demo directory (default: build/demo)")
    parser.add_argument("--n", type=int, default=1500, help="clips to synthesise (default: 1500)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default: 0)")
    parser.add_argument(
        "--steps",
        default=None,
        help=f"comma-separated steps to run, in demo order (default: all of {','.join(s.name for s in STEPS)})",
    )
    parser.add_argument("--fresh", action="store_true", help="delete --out first and start over")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [s.name for s in STEPS]
    wanted = names if args.steps is None else [n.strip() for n in args.steps.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"demo: unknown step(s) {', '.join(unknown)}; choose from {', '.join(names)}", file=sys.stderr)
        return 2
    demo = Demo(args)
    if args.fresh and demo.out.exists():
        shutil.rmtree(demo.out)
    demo.out.mkdir(parents=True, exist_ok=True)
    steps = [s for s in STEPS if s.name in wanted]
    for number, step in enumerate(steps, start=1):
        print(f"\n=== demo step {number}/{len(steps)}: {step.name} ({step.about})", flush=True)
        start = time.monotonic()
        code = step.run(demo)
        if code:
            print(f"demo: step {step.name} failed with exit code {code}", file=sys.stderr)
            return code
        print(f"=== {step.name} done in {time.monotonic() - start:.1f} s", flush=True)
    print(f"\ndemo: {len(steps)} step(s) done; outputs under {demo.out}")
    summary = demo.out / "report" / "summary.json"
    if "report" in wanted and summary.is_file():
        print(summary.resolve())  # the last line: where `make demo`'s result lives
    return 0


if __name__ == "__main__":
    sys.exit(main())
