"""Grafana dashboards for the trainer and the server, built from data (a small builder, no dependency).

Each panel is a `Panel` of PromQL targets over the metric names of docs/interfaces.md §7. The JSON files in
k8s/dashboards/ are generated from here (``python -m k8s.render --dashboards``) and a test checks
that they match; the monitoring workload wraps each dashboard in a ConfigMap for Grafana's sidecar.
`panel_queries` lists every panel's PromQL with Grafana's variables replaced, so that each query can be
run against a real Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k8s.config import PACKAGE_DIR

DASHBOARDS_DIR = PACKAGE_DIR / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
# Labels that tell the processes of one trainer or the pods of one server apart.
PER_PROCESS = "process, instance, pod"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 12


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def quantiles(
    metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.99), name: str = ""
) -> tuple[Target, ...]:
    """p50/p99 (or other quantiles) of a histogram, summed over processes and pods.

    ``name`` prefixes the legend, for panels that show quantiles of several histograms.
    """
    group = f"le, {by}" if by else "le"
    legend_by = f" {{{{{by}}}}}" if by else ""
    prefix = f"{name} " if name else ""
    return tuple(
        Target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RATE}])))",
            f"{prefix}p{round(q * 100)}{legend_by}",
        )
        for q in qs
    )


def _training_rows() -> tuple[Row, ...]:
    return (
        Row(
            "Progress",
            (
                Panel(
                    "Loss", (Target("sawt_train_loss", "{{process}}"),), description="Training loss per step."
                ),
                Panel("Step", (Target(f"max without ({PER_PROCESS}) (sawt_train_step)", "step"),)),
                Panel(
                    "Tokens / s",
                    (Target("sawt_train_tokens_per_second", "{{process}}"),),
                    unit="short",
                ),
                Panel(
                    "Samples and audio / s",
                    (
                        Target("sawt_train_samples_per_second", "samples/s {{process}}"),
                        Target("sawt_train_audio_seconds_per_second", "audio s/s {{process}}"),
                    ),
                ),
                Panel("MFU", (Target("sawt_train_mfu_ratio", "{{process}}"),), unit="percentunit"),
                Panel("Step time", quantiles("sawt_train_step_time_seconds"), unit="s"),
                Panel(
                    "Data wait",
                    quantiles("sawt_train_data_wait_seconds"),
                    unit="s",
                    description="Time the step waited for the input pipeline.",
                ),
            ),
        ),
        Row(
            "Optimisation",
            (
                Panel("Gradient norm", (Target("sawt_train_grad_norm", "{{process}}"),)),
                Panel("Learning rate", (Target("sawt_train_learning_rate", "{{process}}"),)),
                Panel(
                    "Expert load",
                    (Target("sawt_train_expert_load_ratio", "expert {{expert}}"),),
                    unit="percentunit",
                    description="Share of routed tokens per expert (balanced = 1/E).",
                ),
                Panel(
                    "Expert load min / max",
                    (
                        Target("sawt_train_expert_load_min_ratio", "min {{process}}"),
                        Target("sawt_train_expert_load_max_ratio", "max {{process}}"),
                    ),
                    unit="percentunit",
                ),
                Panel(
                    "Skipped steps and bad records",
                    (
                        Target(
                            f"sum without ({PER_PROCESS}) (increase(sawt_train_nonfinite_skips_total[{RATE}]))",
                            "NaN/Inf skips",
                        ),
                        Target(
                            f"sum by (reason) (increase(sawt_train_bad_records_total[{RATE}]))",
                            "bad records {{reason}}",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Checkpoints and evaluation",
            (
                Panel("Checkpoint save duration", quantiles("sawt_train_checkpoint_save_seconds"), unit="s"),
                Panel(
                    "Checkpoint age",
                    (
                        Target(
                            f"time() - max without ({PER_PROCESS}) (sawt_train_checkpoint_last_timestamp_seconds)",
                            "age",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Last checkpoint step",
                    (Target(f"max without ({PER_PROCESS}) (sawt_train_checkpoint_last_step)", "step"),),
                    kind="stat",
                ),
                Panel(
                    "Eval WER per source",
                    (Target("sawt_train_eval_wer_ratio", "WER {{source}}"),),
                    unit="percentunit",
                ),
                Panel(
                    "Eval CER per source",
                    (Target("sawt_train_eval_cer_ratio", "CER {{source}}"),),
                    unit="percentunit",
                ),
            ),
        ),
        Row(
            "Goodput",
            (
                Panel(
                    "Goodput",
                    (Target(f"max without ({PER_PROCESS}) (sawt_train_goodput_ratio)", "goodput"),),
                    unit="percentunit",
                    description="Share of the run's wall time, every attempt and restart included, spent on "
                    "training steps that count (trainer/goodput.py, from the run's own records).",
                ),
                Panel(
                    "Badput by cause",
                    (
                        Target(f"max without ({PER_PROCESS}) (sawt_train_badput_seconds)", "{{cause}}"),
                        Target(f"max without ({PER_PROCESS}) (sawt_train_goodput_seconds)", "productive"),
                    ),
                    unit="s",
                    description="Where the run's wall time went: productive steps and each cause of badput "
                    "(startup, compile, data wait, checkpoint save and restore, eval, restarts, idle).",
                ),
            ),
        ),
        Row(
            "Resources and restarts",
            (
                Panel(
                    "Device memory",
                    (Target("sawt_train_device_memory_bytes", "{{process}} {{kind}}"),),
                    unit="bytes",
                ),
                Panel(
                    "Restarts",
                    (
                        Target(f"max without ({PER_PROCESS}) (sawt_train_resumes_total)", "resumes"),
                        Target(
                            f"max without ({PER_PROCESS}) (increase(sawt_train_resumes_total[{RATE}]))",
                            "resumes in window",
                        ),
                    ),
                ),
            ),
        ),
    )


def _inference_rows() -> tuple[Row, ...]:
    http = "sawt_http_requests_total"
    return (
        Row(
            "Traffic",
            (
                Panel("QPS", (Target(f"sum by (route) (rate({http}[{RATE}]))", "{{route}}"),), unit="reqps"),
                Panel(
                    "Error rate by code",
                    (Target(f'sum by (code) (rate({http}{{code!~"2.."}}[{RATE}]))', "{{code}}"),),
                    unit="reqps",
                ),
                Panel(
                    "Finished requests by reason",
                    (
                        Target(
                            f"sum by (finished_reason) (rate(sawt_request_success_total[{RATE}]))",
                            "{{finished_reason}}",
                        ),
                    ),
                    unit="reqps",
                ),
                Panel(
                    "Tokens and audio / s",
                    (
                        Target(f"sum(rate(sawt_prompt_tokens_total[{RATE}]))", "prompt tokens/s"),
                        Target(f"sum(rate(sawt_generation_tokens_total[{RATE}]))", "generated tokens/s"),
                        Target(f"sum(rate(sawt_audio_seconds_total[{RATE}]))", "audio s/s"),
                    ),
                ),
            ),
        ),
        Row(
            "Latency",
            (
                Panel("Time to first token", quantiles("sawt_time_to_first_token_seconds"), unit="s"),
                Panel("Inter-token latency", quantiles("sawt_inter_token_latency_seconds"), unit="s"),
                Panel("End-to-end latency", quantiles("sawt_e2e_request_latency_seconds"), unit="s"),
                Panel(
                    "Queue, prefill and decode time (p99)",
                    (
                        *quantiles("sawt_request_queue_time_seconds", qs=(0.99,), name="queue"),
                        *quantiles("sawt_request_prefill_time_seconds", qs=(0.99,), name="prefill"),
                        *quantiles("sawt_request_decode_time_seconds", qs=(0.99,), name="decode"),
                    ),
                    unit="s",
                ),
                Panel(
                    "Real-time factor",
                    quantiles("sawt_real_time_factor"),
                    description="Processing time / audio duration (below 1 is faster than real time).",
                ),
            ),
        ),
        Row(
            "Capacity",
            (
                Panel("Queue depth", (Target("sum(sawt_num_requests_waiting)", "waiting"),)),
                Panel("Slots used", (Target("sum(sawt_num_requests_running)", "running"),)),
                Panel(
                    "KV cache usage", (Target("sawt_kv_cache_usage_ratio", "{{pod}}"),), unit="percentunit"
                ),
            ),
        ),
    )


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
        if panel.kind == "timeseries"
        else {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": t.expr, "legendFormat": t.legend}
            for i, t in enumerate(panel.targets)
        ],
    }


def build_dashboard(uid: str, title: str, rows: tuple[Row, ...], tags: tuple[str, ...]) -> dict[str, Any]:
    """A Grafana dashboard (JSON model) with one collapsible row per `Row`, panels two abreast."""
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row in rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id, y, x = next_id + 1, y + 1, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, next_id, x, y))
            next_id, x = next_id + 1, x + panel.width
        y += 8
    return {
        "uid": uid,
        "title": title,
        "tags": list(tags),
        "editable": True,
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def training_dashboard() -> dict[str, Any]:
    return build_dashboard("sawt-training", "sawt / training", _training_rows(), ("sawt", "training"))


def inference_dashboard() -> dict[str, Any]:
    return build_dashboard("sawt-inference", "sawt / inference", _inference_rows(), ("sawt", "inference"))


DASHBOARDS = {"training": training_dashboard, "inference": inference_dashboard}


def panel_queries(dashboard: dict[str, Any], rate_window: str = "1m") -> list[tuple[str, str]]:
    """Every (panel title, PromQL) of a dashboard, with ``$__rate_interval`` replaced by ``rate_window``.

    The result is plain PromQL that a Prometheus HTTP API answers (for the live-metrics test).
    """
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            out.append((panel["title"], target["expr"].replace(RATE, rate_window)))
    return out


def all_queries(rate_window: str = "1m") -> dict[str, list[tuple[str, str]]]:
    """`panel_queries` of every dashboard, keyed by dashboard name (training, inference)."""
    return {name: panel_queries(build(), rate_window) for name, build in DASHBOARDS.items()}


def dashboard_json(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=1, sort_keys=True) + "\n"


def write_dashboards(out_dir: Path = DASHBOARDS_DIR) -> list[Path]:
    """Writes k8s/dashboards/<name>.json for every dashboard."""
    from core.fileio import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in DASHBOARDS.items():
        path = out_dir / f"{name}.json"
        atomic_write_text(path, dashboard_json(build()))
        paths.append(path)
    return paths
