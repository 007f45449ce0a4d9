"""Every Grafana panel returns data from a real Prometheus scraping a real training run and a real server.

Nothing here is mocked (`tools.dev.monitoring_stack`): Debian's Prometheus scrapes, every second, a tiny
`sawt train --config tiny` run on an espeak-ng corpus (with evaluations, checkpoints and a record the loader
skips) and `sawt serve` on a tiny checkpoint under load from the `openai` client (including requests the
server must refuse). Then every PromQL of both dashboards runs through Prometheus' HTTP API, and the PNG
snapshots are rendered from the same data. One run (about two to three minutes on two cores) serves all
tests of this module.
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request

import numpy as np
import pytest

from k8s import grafana
from tools.dev.dashboard_snapshot import query_range, snapshot
from tools.dev.monitoring_stack import StackConfig, live_stack

# Six checkpoints, not three: once compiled, ten tiny steps plus an eval and a save take under a second on a
# quiet machine, and the trainer exits right after its last save. With three saves inside ~2 s the 1 s scrapes
# could miss every increase of the save histogram, leaving the "Checkpoint save duration" panel's
# rate(...[1m]) empty (seen once in a full `make test`, 2026-12-04); six keep increases over several scrapes.
CFG = StackConfig(train_steps=60, eval_every=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with live_stack(tmp_path_factory.mktemp("live"), CFG) as live:
        yield live


def _instant(stack, expr: str) -> list[dict]:
    """An instant query at the end of the run (the server is still up then; the trainer has exited)."""
    params = urllib.parse.urlencode({"query": expr, "time": stack.end})
    with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/query?{params}", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _range(stack, expr: str):
    return query_range(stack.prometheus_url, expr, stack.start, stack.end, 1.0)


def _max(stack, expr: str) -> float:
    values = [v for s in _range(stack, expr) for v in s.values if math.isfinite(v)]
    assert values, f"no data for {expr}"
    return max(values)


def test_every_panel_query_returns_data(stack):
    queries = grafana.all_queries(rate_window="1m")
    assert len(queries["training"]) >= 20 and len(queries["inference"]) >= 15
    missing = []
    for board, panel_queries in queries.items():
        for title, expr in panel_queries:
            series = _range(stack, expr)
            if not any(s.has_finite() for s in series):
                missing.append(f"{board} / {title}: {expr} -> {len(series)} series, no finite value")
    assert not missing, "panels without data:\n" + "\n".join(missing)


def test_training_series_reflect_the_run(stack):
    # Evaluations every 10 steps, overall ("all") and per source; WER is a ratio.
    sources = {s.labels["source"] for s in _range(stack, "sawt_train_eval_wer_ratio")}
    assert "all" in sources and all(s.startswith("espeak_") for s in sources - {"all"}) and len(sources) >= 2
    assert 0 <= _max(stack, "sawt_train_eval_wer_ratio") <= 1.5
    assert _max(stack, "sawt_train_checkpoint_last_step") >= CFG.eval_every
    assert _max(stack, "sawt_train_step") >= 2 * CFG.eval_every
    # The tight text budget makes the loader skip the corpus' longest transcript, once per epoch.
    skipped = _range(stack, "sawt_train_bad_records_total")
    assert {s.labels["reason"] for s in skipped} == {"text_too_long"}
    assert _max(stack, "sawt_train_bad_records_total") >= 1
    # CPU devices have no memory stats: the trainer reports its host RSS, labelled so.
    memory = _range(stack, "sawt_train_device_memory_bytes")
    assert {s.labels["kind"] for s in memory} == {"host_rss", "host_rss_peak"}
    assert _max(stack, 'sawt_train_device_memory_bytes{kind="host_rss"}') > 50 * 2**20
    assert _max(stack, "sawt_train_resumes_total") == 0  # exported from the start, at 0
    assert 0 < _max(stack, "sawt_train_expert_load_max_ratio") <= 1
    # Goodput from the run's own records (process 0): a ratio, and badput for the causes the run had.
    assert 0 < _max(stack, "sawt_train_goodput_ratio") < 1
    causes = {s.labels["cause"] for s in _range(stack, "sawt_train_badput_seconds")}
    assert causes == {"startup", "compile", "data_wait", "checkpoint_save", "checkpoint_restore", "eval",
                      "restart", "idle"}  # fmt: skip
    for cause in ("startup", "compile", "checkpoint_save", "eval"):
        assert _max(stack, f'sawt_train_badput_seconds{{cause="{cause}"}}') > 0, cause


def test_server_series_count_the_load(stack):
    sent = stack.requests
    assert sent["ok"] >= CFG.min_load_rounds * 3 and sent["4xx"] == 2 * sent["stream"]
    finished = _instant(stack, "sum(sawt_request_success_total)")
    assert float(finished[0]["value"][1]) == sent["ok"] + sent["stream"]
    by_code = {
        r["metric"]["code"]: float(r["value"][1])
        for r in _instant(stack, 'sum by (code) (sawt_http_requests_total{route="/v1/audio/transcriptions"})')
    }
    assert by_code == {"200": sent["ok"] + sent["stream"], "400": sent["4xx"] / 2, "404": sent["4xx"] / 2}
    # Every finished request is in the latency histograms; the gauges (running, waiting) are sampled at
    # scrape time, so only their presence is checked (test_every_panel_query_returns_data).
    e2e = _instant(stack, "sum(sawt_e2e_request_latency_seconds_count)")
    assert float(e2e[0]["value"][1]) == sent["ok"] + sent["stream"]
    assert _max(stack, "sawt_generation_tokens_total") > 0


def test_snapshot_pngs(stack, tmp_path):
    import matplotlib.image

    result = snapshot(stack.prometheus_url, stack.start, stack.end, tmp_path, rate_window="1m")
    assert set(result) == {"training", "inference"}
    for name, (path, empty_panels) in result.items():
        assert path == tmp_path / f"dashboard-{name}.png"
        assert empty_panels == [], f"{name}: panels drawn without data: {empty_panels}"
        assert 20_000 < path.stat().st_size < 300_000
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 400 and pixels.shape[1] > 1000
        assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 50  # lines, not a blank
