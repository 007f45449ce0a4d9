"""PNG snapshots of the Grafana dashboards, drawn with matplotlib from a real Prometheus (no Grafana needed).

Every panel of k8s/dashboards' training and inference dashboards (the JSON that `k8s.grafana` builds)
becomes one small chart: each target's PromQL runs through Prometheus' ``/api/v1/query_range`` over the
chosen time range, with Grafana's ``$__rate_interval`` replaced by ``--rate-window``, and every returned
series is drawn with the panel's legend format and unit. Stat panels show their last value.

    python -m tools.dev.dashboard_snapshot --prometheus http://127.0.0.1:9090 --start now-30m --end now
    python -m tools.dev.dashboard_snapshot --live      # `make dashboards-png`: a fresh tiny run, then snapshots

``--live`` starts the same stack as the dashboard test (`tools.dev.monitoring_stack`: Prometheus scraping a tiny
`sawt train` run and a `sawt serve` under load) and writes docs/img/dashboard-{training,inference}.png.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from k8s import grafana
from k8s.config import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "docs" / "img"
COLUMNS = 4
MAX_POINTS = 240  # per series: plenty for a small chart, and well under Prometheus' 11,000-point limit


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or refused a query (the message names the URL or the query)."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    times: list[float]  # unix seconds
    values: list[float]  # NaN where Prometheus answered NaN (e.g. a quantile of an empty window)

    def has_finite(self) -> bool:
        return any(math.isfinite(v) for v in self.values)


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[Series]:
    """Runs ``expr`` through ``/api/v1/query_range``; one `Series` per returned time series.

    Raises:
        PrometheusError: unreachable server, or an error answer (a PromQL syntax error, say).
    """
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    full = f"{url.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(full, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as err:
        try:
            detail = json.load(err).get("error", "")
        except ValueError:
            detail = ""
        raise PrometheusError(f"{url}: HTTP {err.code} for {expr!r}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise PrometheusError(f"{url}: cannot reach Prometheus ({err})") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{url}: query {expr!r} failed: {body.get('error', body)}")
    return [
        Series(
            labels=item["metric"],
            times=[float(t) for t, _ in item["values"]],
            values=[float(v) for _, v in item["values"]],  # float() reads "NaN" and "+Inf"
        )
        for item in body["data"]["result"]
    ]


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legend format: ``{{label}}`` replaced by the series' label value."""
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    return text or ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"


# Grafana unit -> (scale, axis label) for the chart.
_UNITS = {
    "percentunit": (100.0, "%"),
    "bytes": (1.0 / 2**20, "MiB"),
    "s": (1.0, "seconds"),
    "reqps": (1.0, "requests / s"),
}


@dataclass(frozen=True)
class PanelData:
    title: str
    kind: str  # Grafana panel type: timeseries or stat
    unit: str
    lines: list[tuple[str, Series]]  # (legend, series)

    @property
    def empty(self) -> bool:
        return not any(s.has_finite() for _, s in self.lines)


def fetch_dashboard(
    board: dict[str, Any], url: str, start: float, end: float, rate_window: str
) -> list[PanelData]:
    """Every panel of a Grafana dashboard JSON, with its targets' series over [start, end]."""
    step = max(1.0, (end - start) / MAX_POINTS)
    panels = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        lines = []
        for target in panel["targets"]:
            expr = target["expr"].replace(grafana.RATE, rate_window)
            for series in query_range(url, expr, start, end, step):
                lines.append((legend(target.get("legendFormat", ""), series.labels), series))
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        panels.append(PanelData(panel["title"], panel["type"], unit, lines))
    return panels


def render(title: str, panels: list[PanelData], start: float, out: Path, subtitle: str = "") -> Path:
    """Draws ``panels`` as a grid of small charts (``COLUMNS`` abreast) and writes a PNG to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The x axis starts where the first series starts to move: before that (a process importing and
    # compiling) every chart would be flat or empty.
    series = [s for panel in panels for _, s in panel.lines if s.times]
    moving = [s.times[0] for s in series if len({v for v in s.values if math.isfinite(v)}) > 1]
    origin = min(moving or [s.times[0] for s in series] or [start])
    span = max(max((s.times[-1] for s in series), default=origin) - origin, 1.0)
    rows = -(-len(panels) // COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(4.2 * COLUMNS, 2.7 * rows + 0.8), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        scale, axis_label = _UNITS.get(panel.unit, (1.0, ""))
        ax.set_title(panel.title, fontsize=10, loc="left")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if panel.empty:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes, color="gray")
            continue
        if panel.kind == "stat":
            label, last = _last_value(panel)
            ax.text(
                0.5, 0.5, f"{last * scale:g}", ha="center", va="center", fontsize=28, transform=ax.transAxes
            )
            ax.text(
                0.5, 0.15, label, ha="center", va="center", fontsize=8, color="gray", transform=ax.transAxes
            )
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for label, series in panel.lines:
            ax.plot(
                [t - origin for t in series.times], [v * scale for v in series.values], lw=1.2, label=label
            )
        ax.set_xlim(0, span)
        ax.set_ylabel(axis_label, fontsize=8)
        ax.legend(fontsize=7, loc="best", ncol=2 if len(panel.lines) > 4 else 1, framealpha=0.6)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=8)
    height = fig.get_figheight()  # inches: the header keeps the same size whatever the number of rows
    fig.text(0.01, 1 - 0.3 / height, title, fontsize=14, va="center")
    if subtitle:
        fig.text(0.01, 1 - 0.55 / height, subtitle, fontsize=9, color="gray", va="center")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / height))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _last_value(panel: PanelData) -> tuple[str, float]:
    label, series = next((lbl, s) for lbl, s in panel.lines if s.has_finite())
    return label, [v for v in series.values if math.isfinite(v)][-1]


def snapshot(
    url: str, start: float, end: float, out_dir: Path, rate_window: str = "1m", subtitle: str = ""
) -> dict[str, tuple[Path, list[str]]]:
    """Renders every dashboard to ``out_dir/dashboard-<name>.png``.

    Returns:
        name -> (PNG path, titles of the panels that had no data).
    """
    result = {}
    for name, build in grafana.DASHBOARDS.items():
        board = build()
        panels = fetch_dashboard(board, url, start, end, rate_window)
        path = render(board["title"], panels, start, out_dir / f"dashboard-{name}.png", subtitle)
        result[name] = (path, [p.title for p in panels if p.empty])
    return result


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from ``now``, ``now-15m`` (s, m, h, d), a number of unix seconds, or ISO 8601."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"now(?:-(\d+(?:\.\d+)?)([smhd]))?", text.strip())
    if m:
        amount = float(m.group(1) or 0) * {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(m.group(2) or "s", 1)
        return now - amount
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{text!r}: expected now, now-<N><s|m|h|d>, unix seconds or ISO 8601") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.dev.dashboard_snapshot",
        description="Render the sawt Grafana dashboards (training, inference) as PNG grids from Prometheus data.",
        epilog="examples:\n"
        "  python -m tools.dev.dashboard_snapshot --prometheus http://127.0.0.1:9090 --start now-1h\n"
        "  python -m tools.dev.dashboard_snapshot --live   # what `make dashboards-png` runs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prometheus", metavar="URL", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    src.add_argument(
        "--live",
        action="store_true",
        help="start a tiny training run, a loaded server and Prometheus (tools/dev/monitoring_stack.py) first",
    )
    p.add_argument("--start", default="now-30m", help="range start (default: now-30m; ignored with --live)")
    p.add_argument("--end", default="now", help="range end (default: now; ignored with --live)")
    p.add_argument("--rate-window", default="1m", help="replaces Grafana's $__rate_interval (default: 1m)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where PNGs go (default: docs/img)")
    p.add_argument(
        "--workdir", type=Path, help="--live: keep the run's files here (default: a temporary dir)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=60,
        help="--live: training steps (default: 60; eval and checkpoint every 10)",
    )
    return p


def _report(result: dict[str, tuple[Path, list[str]]]) -> int:
    code = 0
    for name, (path, empty) in result.items():
        print(f"{name}: {path} ({path.stat().st_size // 1024} KiB)")
        if empty:
            print(f"  warning: no data for {', '.join(empty)}", file=sys.stderr)
            code = 1
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.steps < 1:
        print("error: --steps must be at least 1", file=sys.stderr)
        return 2
    if args.live:
        from tools.dev.monitoring_stack import StackConfig, StackError, live_stack

        with tempfile.TemporaryDirectory(prefix="sawt-live-") as tmp:
            workdir = args.workdir or Path(tmp)
            say = lambda msg: print(f"[live] {msg}", flush=True)  # noqa: E731
            try:
                with live_stack(workdir, StackConfig(train_steps=args.steps), say) as stack:
                    day = datetime.fromtimestamp(stack.start).strftime("%Y-%m-%d")
                    subtitle = f"A live tiny run on CPU ({day}): Prometheus data, panels as in k8s/dashboards"
                    result = snapshot(
                        stack.prometheus_url, stack.start, stack.end, args.out_dir, args.rate_window, subtitle
                    )
            except StackError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
        return _report(result)
    try:
        start, end = parse_time(args.start), parse_time(args.end)
    except ValueError as err:
        print(f"error: --start/--end: {err}", file=sys.stderr)
        return 2
    if end <= start:
        print(f"error: --end ({args.end}) must be after --start ({args.start})", file=sys.stderr)
        return 2
    try:
        result = snapshot(args.prometheus, start, end, args.out_dir, args.rate_window)
    except PrometheusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return _report(result)


if __name__ == "__main__":
    sys.exit(main())
