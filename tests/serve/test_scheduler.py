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
