"""`sawt bench model`'s measurement frame and JSON contract, with a fake peer and a fake clock.

The real suite (both models, minutes of compute) is a benchmark, not a test; here the HF peer is a stand-in
that reports the seconds it was told to, so what is checked is the interleaving, the ratio and the keys.
"""

import numpy as np
import pytest

from bench.harness import LoadCheck, bench_run
from bench.model import compare, headline
from sawt.cli import main as sawt


class FakePeer:
    """Stands in for `HFPeer` (the torch worker): answers each request with scripted seconds."""

    def __init__(self, seconds):
        self.seconds = iter(seconds)
        self.requests = []

    def request(self, op, n):
        self.requests.append((op, n))
        return {"seconds": next(self.seconds), "loss": 1.5, "ids": [[7, 8]] * 8}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_compare_interleaves_and_reports_the_ratio_with_its_range():
    clock = Clock()
    order = []
    peer = FakePeer([4.0, 6.0, 5.0])

    def ours():
        order.append("ours")
        clock.now += 0.5  # one call; compare runs `repeat` calls per round

    real_request = peer.request
    peer.request = lambda op, n: (order.append("hf"), real_request(op, n))[1]
    figures, last = compare(peer, ours, "train", 3, 2, rounds=3, work=300.0, clock=clock)
    assert order == ["hf", "ours", "ours"] * 3
    assert peer.requests == [("train", 3)] * 3
    assert figures["ours"]["median_s"] == 1.0
    assert figures["hf"]["median_s"] == 5.0
    assert figures["ours"]["tokens_per_s"] == 300.0
    assert figures["speedup_vs_hf"] == {"median": 5.0, "round_median": 5.0, "min": 4.0, "max": 6.0}
    assert last["loss"] == 1.5


def test_model_json_has_the_contract_keys():
    clock = Clock()

    def ours():
        clock.now += 1.0

    loads = iter([0.3, 1.7])
    load = LoadCheck(cores=2, loadavg=lambda: next(loads), meter=None)  # judged by the load average after
    with bench_run("model", load=load, log=lambda _: None) as r:
        train, hf_train = compare(FakePeer([3.0, 3.0]), ours, "train", 1, 1, 2, 90.0, clock=clock)
        decode, hf_decode = compare(FakePeer([2.0, 2.0]), ours, "generate", 2, 1, 2, 16.0, clock=clock)
        r.update(headline(train, decode, hf_train, hf_decode, np.full((8, 2), 7)))
    for key in (
        "train_tokens_per_s_speedup_vs_hf",
        "decode_tokens_per_s_speedup_vs_hf",
        "load_average_before",
        "load_average_after",
        "loaded",
    ):
        assert key in r, key
    assert r["train_tokens_per_s_speedup_vs_hf"] == 3.0
    assert r["decode_tokens_per_s_speedup_vs_hf"] == 2.0
    assert r["decode_first_token_agreement"] == 1.0
    assert r["loaded"] is True  # 1.7 after > 1.0 = half of 2 cores


def test_without_a_peer_the_ratios_are_none():
    clock = Clock()

    def ours():
        clock.now += 1.0

    figures, _ = compare(None, ours, "train", 1, 1, 1, 1.0, clock=clock)
    assert "hf" not in figures
    assert headline(figures, figures, {}, {}, np.zeros((8, 1))) == {
        "train_tokens_per_s_speedup_vs_hf": None,
        "decode_tokens_per_s_speedup_vs_hf": None,
    }


@pytest.mark.parametrize("suite", ["model", "data", "serve"])
def test_every_suite_refuses_a_loaded_machine_when_asked(suite, monkeypatch, capsys):
    """`--refuse-loaded` stops before any work (exit 3) when the load is above half the cores."""
    monkeypatch.setattr("os.getloadavg", lambda: (99.0, 99.0, 99.0))
    assert sawt(["bench", suite, "--refuse-loaded", "--quick"]) == 3
    assert "refused" in capsys.readouterr().err


def test_bench_rejects_a_thread_budget_below_one(capsys):
    assert sawt(["bench", "model", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
