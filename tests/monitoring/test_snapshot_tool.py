"""The snapshot tool's pieces without a live run: legends, time ranges, errors, the Prometheus config it
generates (checked by the real promtool) and the trainer's host-memory fallback on CPU."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tools.dev.dashboard_snapshot import PanelData, Series, legend, main, parse_time, render
from tools.dev.monitoring_stack import free_port, prometheus_config
from trainer.metrics import TrainMetrics


def test_legend_follows_grafana_format():
    labels = {"__name__": "x", "process": "0", "kind": "peak"}
    assert legend("{{process}} {{kind}}", labels) == "0 peak"
    assert legend("p99 {{ process }}", labels) == "p99 0"
    assert legend("", {"code": "404"}) == "code=404"
    assert legend("", {}) == "value"


def test_parse_time():
    assert parse_time("now", now=1000.0) == 1000.0
    assert parse_time("now-15m", now=1000.0) == 100.0
    assert parse_time("now-2h", now=10_000.0) == 2800.0
    assert parse_time("1700000000") == 1_700_000_000.0
    assert parse_time("2026-01-01T00:00:00+00:00") == 1_767_225_600.0
    with pytest.raises(ValueError, match="expected now"):
        parse_time("yesterday")


def test_cli_errors_name_the_problem(capsys, tmp_path):
    assert main(["--prometheus", "http://127.0.0.1:1", "--start", "soon", "--out-dir", str(tmp_path)]) == 2
    assert "--start/--end: 'soon'" in capsys.readouterr().err
    assert main(["--prometheus", "http://127.0.0.1:1", "--start", "now", "--end", "now-1h"]) == 2
    assert "must be after" in capsys.readouterr().err
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["--prometheus", url, "--out-dir", str(tmp_path)]) == 1
    assert f"{url}: cannot reach Prometheus" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        main(["--start", "now-1h"])  # neither --prometheus nor --live


def test_render_marks_empty_panels_and_draws_stat_values(tmp_path):
    line = Series({"process": "0"}, [100.0, 101.0, 102.0], [1.0, float("nan"), 3.0])
    panels = [
        PanelData("Loss", "timeseries", "short", [("0", line)]),
        PanelData("Last checkpoint step", "stat", "short", [("step", line)]),
        PanelData("Nothing", "timeseries", "s", []),
    ]
    out = render("sawt / test", panels, 100.0, tmp_path / "x.png")
    assert out.stat().st_size > 5000
    assert panels[2].empty and not panels[0].empty


def test_generated_prometheus_config_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Debian's prometheus package (make setup does)")
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config({"sawt-train": ("127.0.0.1:9400", "sawt-train-0")}))
    check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_cpu_training_reports_host_rss_as_device_memory():
    m = TrainMetrics(process_index=0)
    m.record_step({"step": 1, "step_seconds": 0.1, "data_wait_seconds": 0.0, "loss": 1.0})
    text = _exposition(m)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    kinds = {s.labels["kind"]: s.value for s in families["sawt_train_device_memory_bytes"].samples}
    assert set(kinds) == {"host_rss", "host_rss_peak"}
    assert 10 * 2**20 < kinds["host_rss"] <= kinds["host_rss_peak"]
    # Counters exist at 0 from the start, so their panels show 0 rather than "No data".
    assert [s.value for s in families["sawt_train_resumes"].samples if s.name.endswith("_total")] == [0.0]
    # A backend that has memory stats reports them under the interface's kinds, and no host RSS.
    tpu = TrainMetrics(process_index=0)
    tpu.record_step(
        {
            "step": 1,
            "step_seconds": 0.1,
            "data_wait_seconds": 0.0,
            "memory_in_use_bytes": 5.0,
            "memory_peak_bytes": 7.0,
        }
    )
    families = {f.name: f for f in text_string_to_metric_families(_exposition(tpu))}
    kinds = {s.labels["kind"]: s.value for s in families["sawt_train_device_memory_bytes"].samples}
    assert kinds == {"in_use": 5.0, "peak": 7.0}


def _exposition(metrics: TrainMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()
