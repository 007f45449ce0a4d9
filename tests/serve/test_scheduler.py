"""Continuous batching logic, driven by a scripted runner.

`ScriptRunner` stands in for the model only here, to make the scheduling decisions observable (which slots
decode together at each step); the JAX runner is tested against the real model in test_e2e_engine.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from inference_server.scheduler import QueueFull, Sampling, Scheduler, Sequence, sample_token

V = 32
EOS = 0


class ScriptRunner:
    """Each prompt is the list of tokens to "generate"; logits are one-hot on the next scripted token."""

    def __init__(self, num_slots: int, max_seq_len: int = 64, gate: threading.Event | None = None):
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.scripts: list[list[int]] = [[] for _ in range(num_slots)]
        self.pos = [0] * num_slots
        self.steps: list[tuple[int, ...]] = []  # active slots per decode step
        self.gate = gate

    def _onehot(self, token: int) -> np.ndarray:
        out = np.full(V, -10.0, np.float32)
        out[token] = 10.0
        return out

    def prefill(self, slot, prompt):
        self.scripts[slot] = [*prompt, EOS]
        self.pos[slot] = 1
        return self._onehot(self.scripts[slot][0])

    def decode(self, tokens_b, active_b):
        if self.gate is not None:
            self.gate.wait()
        self.steps.append(tuple(np.flatnonzero(active_b)))
        out = np.stack([self._onehot(EOS)] * self.num_slots)
        for slot in np.flatnonzero(active_b):
            out[slot] = self._onehot(self.scripts[slot][self.pos[slot]])
            self.pos[slot] += 1
        return out


def run(scheduler, prompts, sampling=None):
    results = {}
    done = threading.Event()

    def make(i):
        def on_token(tok, t):
            results.setdefault(i, {"tokens": []})["tokens"].append(tok)

        def on_finish(reason, stats):
            results.setdefault(i, {"tokens": []})["reason"] = reason
            if all("reason" in r for r in results.values()) and len(results) == len(prompts):
                done.set()

        return Sequence(prompts[i], 3, sampling or Sampling(stop_ids=frozenset({EOS})), on_token, on_finish)

    seqs = [make(i) for i in range(len(prompts))]
    scheduler.submit(seqs)
    assert done.wait(30)
    return results, seqs


def test_continuous_batching_joins_and_leaves():
    runner = ScriptRunner(num_slots=2)
    sched = Scheduler(runner, max_queue=8)
    sched.start()
    try:
        prompts = [list(range(1, 11)), [20, 21], [22, 23, 24]]  # one long, two short
        results, _ = run(sched, prompts)
    finally:
        sched.stop()
    assert [results[i]["tokens"] for i in range(3)] == prompts
    assert all(results[i]["reason"] == "stop" for i in range(3))
    # The third request joined while the long one was still decoding (no waiting for the batch to drain),
    # and the long one never had to wait for anything.
    slot_of_long = 0
    assert all(slot_of_long in step for step in runner.steps[:10])
    assert sched.max_running_seen == 2
    assert len(runner.steps) == 10  # the long request's length, not the sum of all


def test_length_limit_and_cache_capacity():
    runner = ScriptRunner(num_slots=1, max_seq_len=8)
    sched = Scheduler(runner)
    sched.start()
    try:
        res, _ = run(sched, [list(range(1, 20))], Sampling(max_new_tokens=4, stop_ids=frozenset({EOS})))
        assert res[0] == {"tokens": [1, 2, 3, 4], "reason": "length"}
        # prompt (3) + generated tokens fill at most the 8-token cache: 5 generated.
        res, _ = run(sched, [list(range(1, 20))], Sampling(max_new_tokens=100, stop_ids=frozenset({EOS})))
        assert res[0]["reason"] == "length" and res[0]["tokens"] == [1, 2, 3, 4, 5]
    finally:
        sched.stop()


def test_queue_bound_and_cancel():
    gate = threading.Event()
    runner = ScriptRunner(num_slots=1, gate=gate)
    sched = Scheduler(runner, max_queue=1)
    sched.start()
    finished = []
    try:
        mk = lambda: Sequence(  # noqa: E731
            [5] * 30,
            3,
            Sampling(stop_ids=frozenset({EOS})),
            lambda t, n: None,
            lambda r, s: finished.append(r),
        )
        a, b = mk(), mk()
        sched.submit([a])
        sched.submit([b])
        with pytest.raises(QueueFull):
            sched.submit([mk()])
        sched.cancel(a)
        sched.cancel(b)
        gate.set()
        for _ in range(200):
            if len(finished) == 2:
                break
            threading.Event().wait(0.02)
        assert finished == ["abort", "abort"]
        assert sched.counts() == (0, 0)
    finally:
        gate.set()
        sched.stop()


def test_runner_failure_aborts_requests_and_marks_dead():
    class Broken(ScriptRunner):
        def decode(self, tokens_b, active_b):
            raise RuntimeError("device lost")

    sched = Scheduler(Broken(num_slots=2))
    sched.start()
    res, _ = run(sched, [[1, 2, 3]])
    assert res[0]["reason"] == "abort"
    assert not sched.alive and "device lost" in repr(sched.error)


def test_sampling():
    logits = np.array([0.0, 5.0, 4.9, -3.0])
    assert sample_token(logits, Sampling(), None) == 1
    rng = np.random.default_rng(0)
    draws = {sample_token(logits, Sampling(temperature=1.0, top_p=0.9), rng) for _ in range(200)}
    assert draws == {1, 2}  # top-p drops the unlikely tail
    draws = {sample_token(logits, Sampling(temperature=1.0, top_p=1.0), rng) for _ in range(400)}
    assert 0 in draws


def _short_latencies(bound: int | None, long_windows: int, slots: int = 4) -> tuple[list[int], int]:
    """Short requests (one 5-token window every 10 steps) beside an upload of ``long_windows`` 20-token
    windows submitted first, on a clock that counts scheduler iterations. Returns the short requests'
    latencies in steps and the most slots the upload held at once."""
    runner = ScriptRunner(num_slots=slots)
    sched = Scheduler(runner, max_queue=1000, max_running_per_group=bound)
    upload = object()
    finished: dict[int, int] = {}
    sampling = Sampling(max_new_tokens=100, stop_ids=frozenset({EOS}))

    def seq(prompt, key, group):
        def on_finish(reason, stats):
            finished[key] = clock

        return Sequence(prompt, len(prompt), sampling, lambda t, now: None, on_finish, group=group)

    clock = 0
    if long_windows:
        sched.submit([seq([1] * 20, -1 - k, upload) for k in range(long_windows)])
    arrivals = {}
    most = 0
    for clock in range(2000):
        if clock % 10 == 5 and clock < 400:
            arrivals[clock] = clock
            sched.submit([seq([2] * 5, clock, object())])
        sched.step()
        most = max(most, sum(1 for s in sched._slots if s is not None and s.group is upload))
        if len(finished) == len(arrivals) + long_windows and clock >= 400:
            break
    return [finished[k] - arrivals[k] for k in arrivals], most


def _p99(values):
    return float(np.percentile(values, 99))


def test_a_long_upload_does_not_starve_short_requests():
    """sglang-omni's rule: a bounded number of one request's windows in flight. With it, short requests'
    p99 under a 40-window upload stays within 1.5x their p99 alone; without it they wait for the upload."""
    alone, _ = _short_latencies(bound=2, long_windows=0)
    bounded, held = _short_latencies(bound=2, long_windows=40)
    unbounded, held_unbounded = _short_latencies(bound=None, long_windows=40)
    assert held == 2 and held_unbounded == 4
    assert _p99(bounded) <= 1.5 * _p99(alone), (_p99(bounded), _p99(alone))
    assert _p99(unbounded) > 10 * _p99(alone), (_p99(unbounded), _p99(alone))


def test_the_bound_is_work_conserving_within_the_upload_and_validated():
    # Alone, the upload still uses its bound's worth of slots and finishes every window in order.
    runner = ScriptRunner(num_slots=4)
    sched = Scheduler(runner, max_running_per_group=3)
    group = object()
    order = []
    seqs = [
        Sequence(
            [1] * 3,
            3,
            Sampling(stop_ids=frozenset({EOS})),
            lambda t, now: None,
            lambda reason, stats, k=k: order.append(k),
            group=group,
        )
        for k in range(7)
    ]
    sched.submit(seqs)
    for _ in range(50):
        sched.step()
    assert order == list(range(7))
    assert max(len(active) for active in runner.steps) == 3
    with pytest.raises(ValueError, match="at least 1"):
        Scheduler(runner, max_running_per_group=0)
