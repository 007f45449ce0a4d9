"""Dashboards and alert rules: generated files up to date, interface-7 metric names only, PromQL that
Prometheus parses, rules that `promtool check rules` accepts and that fire (promtool test rules)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap

import pytest
import yaml
from helpers.metric_names import HISTOGRAMS, SERVER_METRICS, TRAINER_METRICS

from k8s import alerting, grafana, render
from k8s.config import load_values

REQUIRED_PANELS = {
    "training": {
        "Loss",
        "Tokens / s",
        "MFU",
        "Step time",
        "Data wait",
        "Gradient norm",
        "Learning rate",
        "Expert load",
        "Checkpoint save duration",
        "Checkpoint age",
        "Eval WER per source",
        "Device memory",
        "Restarts",
        "Goodput",
        "Badput by cause",
    },
    "inference": {
        "QPS",
        "Time to first token",
        "Inter-token latency",
        "End-to-end latency",
        "Queue depth",
        "Slots used",
        "Real-time factor",
        "Error rate by code",
    },
}


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's prometheus package (apt-get install prometheus)")
    return path


def _metric_names(expr: str) -> set[str]:
    """The sawt_* series an expression reads, with histogram _bucket/_count/_sum folded to the metric name."""
    names = set()
    for name in re.findall(r"\b(sawt_[a-z0-9_]+)", expr):
        base, _, suffix = name.rpartition("_")
        names.add(base if suffix in ("bucket", "count", "sum") and base in HISTOGRAMS else name)
    return names


def test_committed_dashboards_match_the_builder():
    for name, build in grafana.DASHBOARDS.items():
        path = grafana.DASHBOARDS_DIR / f"{name}.json"
        assert path.read_text() == grafana.dashboard_json(build()), (
            f"{path} is stale; regenerate with: .venv/bin/python -m k8s.render --dashboards"
        )


@pytest.mark.parametrize("name", sorted(REQUIRED_PANELS))
def test_dashboards_have_the_required_panels_and_only_interface_metrics(name):
    board = grafana.DASHBOARDS[name]()
    queries = grafana.panel_queries(board)
    titles = {title for title, _ in queries}
    assert REQUIRED_PANELS[name] <= titles, REQUIRED_PANELS[name] - titles
    allowed = TRAINER_METRICS if name == "training" else SERVER_METRICS
    used: set[str] = set()
    for title, expr in queries:
        names = _metric_names(expr)
        assert names, (title, expr)
        assert names <= allowed, (title, names - allowed)
        assert "$__" not in expr  # Grafana variables replaced: plain PromQL
        used |= names
    # Every histogram is read through _bucket, never as a bare series.
    for title, expr in queries:
        for histogram in HISTOGRAMS & _metric_names(expr):
            assert f"{histogram}_bucket" in expr, (title, expr)
    assert len(used) >= len(allowed) - 2  # nearly every exported metric has a panel
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_all_queries_lists_both_dashboards():
    queries = grafana.all_queries("2m")
    assert set(queries) == {"training", "inference"}
    assert all("[2m]" in q for _, q in queries["inference"] if "rate(" in q)


def _check_rules(promtool, tmp_path, rules: dict, name: str) -> None:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_parses_as_promql(promtool, tmp_path):
    rules = [
        {"record": f"sawt:dashboard_check:{i}", "expr": expr}
        for i, (_, expr) in enumerate(q for qs in grafana.all_queries("5m").values() for q in qs)
    ]
    _check_rules(
        promtool, tmp_path, {"groups": [{"name": "dashboard-queries", "rules": rules}]}, "queries.yaml"
    )


def test_committed_rules_file_is_current_and_valid(promtool, tmp_path):
    text = alerting.RULES_FILE.read_text()
    assert yaml.safe_load(text) == alerting.alert_rules(), (
        "k8s/alerts/sawt-rules.yaml is stale; regenerate with: .venv/bin/python -m k8s.render --alerts"
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(alerting.RULES_FILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    names = {rule["alert"] for group in alerting.alert_rules()["groups"] for rule in group["rules"]}
    assert {
        "SawtTrainingStalled",
        "SawtTrainingNonFiniteSkips",
        "SawtServerErrors",
        "SawtServerLatencyP99",
        "SawtTrainingLowGoodput",
    } <= names


@pytest.mark.parametrize("backend", ["gmp", "prometheus-operator"])
def test_rendered_rule_objects_pass_promtool(backend, promtool, tmp_path):
    objects = render.render_objects(load_values(None, [f"monitoring.backend={backend}"]), "monitoring")
    (rule_object,) = [o for o in objects if o["kind"] in ("Rules", "PrometheusRule")]
    assert rule_object["kind"] == ("Rules" if backend == "gmp" else "PrometheusRule")
    if backend == "prometheus-operator":
        assert rule_object["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    _check_rules(promtool, tmp_path, rule_object["spec"], f"{backend}.yaml")
    boards = [o for o in objects if o["kind"] == "ConfigMap"]
    assert {o["metadata"]["labels"]["grafana_dashboard"] for o in boards} == {"1"}
    assert json.loads(boards[0]["data"]["training.json"]) == grafana.training_dashboard()


def test_alert_rules_fire_on_synthetic_series(promtool, tmp_path):
    """promtool's rule unit tests: a flat step counter and a 10% 5xx rate fire; a moving step does not."""
    alerting.write_rules_file(tmp_path / "rules.yaml")
    tests = textwrap.dedent(
        """
        rule_files: [rules.yaml]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'sawt_train_step{job="trainer", process="0"}'
                values: '100x30'
              - series: 'sawt_train_step{job="moving", process="0"}'
                values: '0+1x30'
              - series: 'sawt_http_requests_total{job="server", route="/v1/audio/transcriptions", code="200"}'
                values: '0+90x30'
              - series: 'sawt_http_requests_total{job="server", route="/v1/audio/transcriptions", code="503"}'
                values: '0+10x30'
            alert_rule_test:
              - eval_time: 25m
                alertname: SawtTrainingStalled
                exp_alerts:
                  - exp_labels: {severity: critical, job: trainer}
                    exp_annotations:
                      summary: Training made no progress for trainer
                      description: 'sawt_train_step has not changed in 15m: the trainer is hung, waiting on data, or stuck restoring.'
              - eval_time: 25m
                alertname: SawtServerErrors
                exp_alerts:
                  - exp_labels: {severity: critical, job: server}
                    exp_annotations:
                      summary: The server answers with 5xx
                      description: 10% of requests failed with a 5xx code over 5 minutes.
        """
    )
    (tmp_path / "tests.yaml").write_text(tests)
    result = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_low_goodput_alert_fires_only_after_the_first_hour(promtool, tmp_path):
    """A run at 30% goodput alerts once it has run an hour; at 80%, or in its first hour, it does not."""
    alerting.write_rules_file(tmp_path / "rules.yaml")
    tests = textwrap.dedent(
        """
        rule_files: [rules.yaml]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'sawt_train_goodput_ratio{job="slow", process="0"}'
                values: '0.3x120'
              - series: 'sawt_train_goodput_seconds{job="slow", process="0"}'
                values: '1000+18x120'
              - series: 'sawt_train_badput_seconds{job="slow", process="0", cause="data_wait"}'
                values: '2500+42x120'
              - series: 'sawt_train_goodput_ratio{job="fine", process="0"}'
                values: '0.8x120'
              - series: 'sawt_train_goodput_seconds{job="fine", process="0"}'
                values: '3000+48x120'
              - series: 'sawt_train_badput_seconds{job="fine", process="0", cause="compile"}'
                values: '750+12x120'
              - series: 'sawt_train_goodput_ratio{job="young", process="0"}'
                values: '0.1x120'
              - series: 'sawt_train_goodput_seconds{job="young", process="0"}'
                values: '10x120'
              - series: 'sawt_train_badput_seconds{job="young", process="0", cause="startup"}'
                values: '90x120'
            alert_rule_test:
              - eval_time: 10m
                alertname: SawtTrainingLowGoodput
                exp_alerts: []
              - eval_time: 60m
                alertname: SawtTrainingLowGoodput
                exp_alerts:
                  - exp_labels: {severity: warning, job: slow}
                    exp_annotations:
                      summary: Training goodput is low for slow
                      description: 'Only 30% of the run''s wall time went into training steps that count (threshold 50%); see the Badput by cause panel.'
        """
    )
    (tmp_path / "tests.yaml").write_text(tests)
    result = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
