"""Training metrics: Prometheus (names of docs/interfaces.md §7), stdout lines and a metrics.jsonl.

Every process serves its own ``/metrics`` (label ``process``); only process 0 writes ``metrics.jsonl``.
The registry is injected, so tests read it without a server and nothing is global.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from core.fileio import DurableJsonl
from trainer.goodput import Goodput

_STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_SAVE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def host_rss_bytes() -> dict[str, float]:
    """This process's resident memory now and at its peak (``host_rss``, ``host_rss_peak``); {} off Linux."""
    fields = {"VmRSS": "host_rss", "VmHWM": "host_rss_peak"}
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in fields:
                    out[fields[key]] = float(value.split()[0]) * 1024  # reported in kB
    except (OSError, IndexError, ValueError):
        return {}
    return out


class TrainMetrics:
    """The trainer's Prometheus metrics for one process."""

    def __init__(self, process_index: int, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.process = str(process_index)
        r, p = self.registry, ["process"]

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, [*p, *extra], registry=r)

        self.step = gauge("sawt_train_step", "Optimizer steps completed.")
        self.step_time = Histogram(
            "sawt_train_step_time_seconds", "Wall time per step.", p, buckets=_STEP_BUCKETS, registry=r
        )
        self.loss = gauge("sawt_train_loss", "Training loss of the last step.")
        self.grad_norm = gauge("sawt_train_grad_norm", "Global gradient norm of the last step.")
        self.learning_rate = gauge("sawt_train_learning_rate", "Learning rate of the last step.")
        self.tokens_per_second = gauge("sawt_train_tokens_per_second", "Loss tokens per second (global).")
        self.samples_per_second = gauge("sawt_train_samples_per_second", "Rows per second (global).")
        self.audio_seconds_per_second = gauge(
            "sawt_train_audio_seconds_per_second", "Seconds of audio trained on per second (global)."
        )
        self.data_wait = Histogram(
            "sawt_train_data_wait_seconds",
            "Time the step waited for its batch.",
            p,
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.mfu = gauge("sawt_train_mfu_ratio", "Model FLOPs utilisation (see trainer/flops.py).")
        self.checkpoint_save = Histogram(
            "sawt_train_checkpoint_save_seconds",
            "Blocking time of a checkpoint save.",
            p,
            buckets=_SAVE_BUCKETS,
            registry=r,
        )
        self.checkpoint_last_step = gauge("sawt_train_checkpoint_last_step", "Step of the last checkpoint.")
        self.checkpoint_last_timestamp = gauge(
            "sawt_train_checkpoint_last_timestamp_seconds", "Unix time of the last checkpoint."
        )
        self.eval_wer = gauge("sawt_train_eval_wer_ratio", "Validation WER by source.", ("source",))
        self.eval_cer = gauge("sawt_train_eval_cer_ratio", "Validation CER by source.", ("source",))
        self.device_memory = gauge(
            "sawt_train_device_memory_bytes",
            "Device memory (kind in_use/peak); on a backend without memory stats (CPU), the process's resident "
            "host memory (kind host_rss/host_rss_peak).",
            ("kind",),
        )
        self.bad_records = Counter(
            "sawt_train_bad_records_total", "Records the loader skipped.", [*p, "reason"], registry=r
        )
        self.nonfinite_skips = Counter(
            "sawt_train_nonfinite_skips_total", "Steps skipped for a NaN/Inf loss or gradient.", p, registry=r
        )
        self.expert_load = gauge(
            "sawt_train_expert_load_ratio", "Fraction of routing per expert.", ("expert",)
        )
        self.expert_load_min = gauge("sawt_train_expert_load_min_ratio", "Least-loaded expert's fraction.")
        self.expert_load_max = gauge("sawt_train_expert_load_max_ratio", "Most-loaded expert's fraction.")
        self.resumes = Counter(
            "sawt_train_resumes_total", "Times this run resumed from a checkpoint.", p, registry=r
        )
        self.goodput = gauge(
            "sawt_train_goodput_ratio",
            "Share of the run's wall time (every attempt, restarts included) spent on steps that count "
            "(trainer/goodput.py); process 0 only.",
        )
        self.goodput_seconds = gauge(
            "sawt_train_goodput_seconds", "Productive step time of the run over all attempts; process 0 only."
        )
        self.badput = gauge(
            "sawt_train_badput_seconds",
            "Wall time of the run lost, by cause: startup, compile, data_wait, checkpoint_save, "
            "checkpoint_restore, eval, restart, idle; process 0 only.",
            ("cause",),
        )
        self._bad_seen: dict[str, float] = {}
        # Counters without other labels start at 0, so dashboards show "0" rather than "No data".
        self.nonfinite_skips.labels(self.process)
        self.resumes.labels(self.process)

    def serve(self, port: int) -> None:
        """Starts the /metrics HTTP server on ``port`` (a daemon thread)."""
        start_http_server(port, registry=self.registry)

    def record_step(self, rec: dict[str, Any]) -> None:
        """Updates the gauges from one step record (see `trainer.train` for the keys)."""
        lp = self.process
        self.step.labels(lp).set(rec["step"])
        self.step_time.labels(lp).observe(rec["step_seconds"])
        self.data_wait.labels(lp).observe(rec["data_wait_seconds"])
        for key, metric in (
            ("loss", self.loss),
            ("grad_norm", self.grad_norm),
            ("learning_rate", self.learning_rate),
            ("tokens_per_second", self.tokens_per_second),
            ("samples_per_second", self.samples_per_second),
            ("audio_seconds_per_second", self.audio_seconds_per_second),
            ("mfu", self.mfu),
            ("expert_load_min", self.expert_load_min),
            ("expert_load_max", self.expert_load_max),
        ):
            if key in rec and rec[key] is not None and math.isfinite(rec[key]):
                metric.labels(lp).set(rec[key])
        for i, value in enumerate(rec.get("expert_load") or []):
            self.expert_load.labels(lp, str(i)).set(value)
        if not rec.get("finite", True):
            self.nonfinite_skips.labels(lp).inc()
        if rec.get("memory_in_use_bytes") is None and rec.get("memory_peak_bytes") is None:
            # jax's CPU devices report no memory stats: show what the host offers, labelled as such.
            for kind, value in host_rss_bytes().items():
                self.device_memory.labels(lp, kind).set(value)
        for kind in ("in_use", "peak"):
            if rec.get(f"memory_{kind}_bytes") is not None:
                self.device_memory.labels(lp, kind).set(rec[f"memory_{kind}_bytes"])

    def record_bad_records(self, totals: dict[str, float]) -> None:
        """Advances the bad-record counters to the loader's running totals per reason."""
        for reason, total in totals.items():
            delta = total - self._bad_seen.get(reason, 0.0)
            if delta > 0:
                self.bad_records.labels(self.process, reason).inc(delta)
                self._bad_seen[reason] = total

    def record_checkpoint(self, step: int, seconds: float) -> None:
        self.checkpoint_save.labels(self.process).observe(seconds)
        self.checkpoint_last_step.labels(self.process).set(step)
        self.checkpoint_last_timestamp.labels(self.process).set(time.time())

    def record_goodput(self, result: Goodput) -> None:
        """Sets the goodput gauges from `trainer.goodput.GoodputTracker.report`."""
        self.goodput.labels(self.process).set(result.ratio)
        self.goodput_seconds.labels(self.process).set(result.productive_seconds)
        for cause, seconds in result.badput_seconds.items():
            self.badput.labels(self.process, cause).set(seconds)

    def record_eval(self, result: dict[str, Any]) -> None:
        """Sets WER/CER gauges from `trainer.asr_metrics.score` output (source "all" = overall)."""
        entries = {"all": result["overall"], **result["per_source"]}
        for source, entry in entries.items():
            self.eval_wer.labels(self.process, source).set(entry["wer"])
            self.eval_cer.labels(self.process, source).set(entry["cer"])


class RunLog:
    """Process 0's human log (stdout) and machine log (metrics.jsonl, fsynced per record).

    ``on_record`` sees every record as written (with its ``time``), e.g. the goodput tracker.
    """

    def __init__(
        self, run_dir: Path, enabled: bool, on_record: Callable[[dict[str, Any]], None] | None = None
    ):
        self.enabled = enabled
        self._jsonl = DurableJsonl(run_dir / "metrics.jsonl") if enabled else None
        self._on_record = on_record

    def write(self, record: dict[str, Any], line: str | None = None) -> None:
        if not self.enabled:
            return
        assert self._jsonl is not None
        record = {"time": time.time(), **record}
        self._jsonl.append(record)
        if self._on_record is not None:
            self._on_record(record)
        if line:
            print(line, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
