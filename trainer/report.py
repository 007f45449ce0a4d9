"""A training report from a run directory: loss and WER curves (PNG), a markdown summary and summary.json.

Reads only ``RUN_DIR/metrics.jsonl`` (written by process 0 of `sawt train`), so it works on a finished,
running or crashed run alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core.fileio import atomic_write_json, atomic_write_text, read_jsonl


def collect(run_dir: Path) -> dict[str, Any]:
    """Loss per step, eval results per step, and the run's wall time, from metrics.jsonl."""
    steps, losses, evals, times = [], [], [], []
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        times.append(rec.get("time", 0.0))
        if "loss" in rec and "step" in rec and rec.get("event") is None:
            steps.append(rec["step"])
            losses.append(rec["loss"])
        elif rec.get("event") == "eval":
            evals.append(rec)
    if not steps and not evals:
        raise FileNotFoundError(f"{run_dir / 'metrics.jsonl'}: no training records")
    return {
        "steps": steps,
        "losses": losses,
        "evals": evals,
        "seconds": (max(times) - min(times)) if times else 0,
    }


def write_report(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Writes loss.png, wer.png, report.md and summary.json into ``out_dir``; returns summary.json's path.

    summary.json holds ``wer_before`` and ``wer_after`` (fractions: the first and last evaluation of the
    run), ``cer_before``/``cer_after``, ``final_step``, ``final_loss``, ``train_seconds`` and the eval curve.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = collect(run_dir)
    evals = data["evals"]
    wer_steps = [e["step"] for e in evals]
    wers = [e["overall"]["wer"] for e in evals]

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(data["steps"], data["losses"], lw=1)
    ax.set(xlabel="step", ylabel="training loss", title="Loss", yscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(wer_steps, [100 * w for w in wers], marker="o")
    ax.set(xlabel="step", ylabel="WER (%)", title="Word error rate (greedy decoding)", ylim=(0, None))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "wer.png", dpi=120)
    plt.close(fig)

    summary = {
        "run_dir": str(run_dir),
        "wer_before": wers[0] if wers else None,
        "wer_after": wers[-1] if wers else None,
        "cer_before": evals[0]["overall"]["cer"] if evals else None,
        "cer_after": evals[-1]["overall"]["cer"] if evals else None,
        "final_step": data["steps"][-1] if data["steps"] else 0,
        "final_loss": data["losses"][-1] if data["losses"] else None,
        "train_seconds": data["seconds"],
        "eval_curve": [{"step": s, "wer": w} for s, w in zip(wer_steps, wers, strict=True)],
        "per_source_after": evals[-1].get("per_source", {}) if evals else {},
    }
    lines = [
        "# Training report",
        "",
        f"- run: `{run_dir}`",
        f"- steps: {summary['final_step']}, final loss {summary['final_loss']:.4f}"
        if summary["final_loss"] is not None
        else "- steps: 0",
        f"- wall time (first to last record): {summary['train_seconds'] / 60:.1f} min",
    ]
    if wers:
        lines += [
            f"- **WER before: {100 * wers[0]:.1f}%, after: {100 * wers[-1]:.1f}%** "
            f"(CER {100 * summary['cer_before']:.1f}% -> {100 * summary['cer_after']:.1f}%)",
            "",
            "| step | WER |",
            "|---|---|",
            *[f"| {s} | {100 * w:.1f}% |" for s, w in zip(wer_steps, wers, strict=True)],
        ]
    lines += ["", "![loss](loss.png)", "", "![wer](wer.png)", ""]
    atomic_write_text(out_dir / "report.md", "\n".join(lines))
    path = out_dir / "summary.json"
    atomic_write_json(path, summary)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.report", description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help="report directory (default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    print(write_report(args.run_dir, args.out or Path(args.run_dir) / "report"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
