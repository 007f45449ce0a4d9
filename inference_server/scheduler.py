"""Continuous batching over a fixed number of decode slots.

One worker thread owns the model. Each iteration it (1) moves waiting sequences into free slots, running
their prefill (which fills that slot's KV-cache row), then (2) runs one batched decode step for every
occupied slot. A sequence that finishes (stop token, token budget, cache full, or cancelled) frees its slot
at once, and the next waiting sequence joins at the following iteration: the batch never waits for its
slowest member.

Fairness: sequences of one request (the windows of one long upload) share a ``group``, and at most
``max_running_per_group`` of a group hold slots at once (as sglang-omni bounds a request's chunks in
flight). Admission takes the first waiting sequence whose group is under that bound, so a short request that
arrives behind a ten-minute upload gets the next free slot instead of waiting for every one of its windows.

The model sits behind `ModelRunner`, so the scheduling logic is tested without JAX, and the same scheduler
drives the JAX runner on CPU or TPU.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("sawt.scheduler")


class ModelRunner(Protocol):
    """The model as the scheduler sees it: per-slot prefill, batched decode over all slots.

    Implementations keep the KV cache for ``num_slots`` rows and compile for a few static shapes only.
    """

    num_slots: int
    max_seq_len: int  # KV-cache capacity per slot (prompt + generated tokens)

    def prefill(self, slot: int, prompt: Any) -> np.ndarray:
        """Writes ``prompt`` into ``slot``'s cache row; returns float logits ``[V]`` for the next token."""
        ...

    def decode(self, tokens_b: np.ndarray, active_b: np.ndarray) -> np.ndarray:
        """Feeds one token per slot (``[num_slots]`` int32); returns logits ``[num_slots, V]``.

        Rows where ``active_b`` is False are ignored (their cache rows are left unchanged or don't matter).
        """
        ...


class QueueFull(Exception):
    """More sequences are waiting than the queue bound allows."""


class SchedulerDead(Exception):
    """The worker thread has stopped after an error."""


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 448
    stop_ids: frozenset[int] = frozenset()
    seed: int | None = None


@dataclass
class Sequence:
    """One prompt to complete (for ASR, one audio window).

    Callbacks run on the worker thread and must be quick and thread-safe (e.g. ``call_soon_threadsafe``).
    ``on_token(token_id, time)`` is called for each generated token except stop tokens;
    ``on_finish(reason, stats)`` exactly once, with reason ``stop``, ``length`` or ``abort``.
    """

    prompt: Any
    prompt_len: int
    sampling: Sampling
    on_token: Callable[[int, float], None]
    on_finish: Callable[[str, SeqStats], None]
    stats: SeqStats = field(default_factory=lambda: SeqStats(arrival=time.monotonic()))
    group: Any = None  # sequences of one request (None: a group of its own)
    cancelled: bool = False
    generated: int = 0
    last_token: int = 0
    rng: np.random.Generator | None = None


@dataclass
class SeqStats:
    arrival: float
    scheduled: float | None = None
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    error: str | None = None


def sample_token(logits_v: np.ndarray, sampling: Sampling, rng: np.random.Generator | None) -> int:
    """Greedy when temperature is 0; otherwise temperature + nucleus (top-p) sampling."""
    if sampling.temperature <= 0.0 or rng is None:
        return int(np.argmax(logits_v))
    z = logits_v.astype(np.float64) / sampling.temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, sampling.top_p) + 1)]  # smallest set with mass >= top_p
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(len(p), p=p))


class Scheduler:
    """Owns the runner and its worker thread; `submit` is safe from any thread.

    Args:
        runner: the model.
        max_queue: sequences allowed to wait (`submit` raises `QueueFull` past it).
        max_running_per_group: most sequences of one group in slots at once (None: no bound).
    """

    def __init__(self, runner: ModelRunner, *, max_queue: int = 64, max_running_per_group: int | None = None):
        if max_running_per_group is not None and max_running_per_group < 1:
            raise ValueError(f"max_running_per_group must be at least 1, got {max_running_per_group}")
        self.runner = runner
        self.max_queue = max_queue
        self.max_running_per_group = max_running_per_group
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._slots: list[Sequence | None] = [None] * runner.num_slots
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.steps = 0  # decode steps run (for tests and logs)
        self.max_running_seen = 0

    # ---- public API -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sawt-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """No error and not stopped; once started, its worker thread is running."""
        if self.error is not None or self._stop:
            return False
        return self._thread is None or self._thread.is_alive()

    def submit(self, seqs: list[Sequence]) -> None:
        """Queues sequences together (all or none). Raises `QueueFull` or `SchedulerDead`."""
        with self._cond:
            if not self.alive:
                raise SchedulerDead(f"scheduler is not running ({self.error!r})")
            free = self.free_slots()
            over = len(self._waiting) + len(seqs) > self.max_queue + free
            # A request with more windows than the bound still gets in when nothing waits and a slot is free,
            # or it could never be served.
            if over and (self._waiting or free == 0):
                raise QueueFull(f"{len(self._waiting)} sequences waiting, {free} slots free")
            for seq in seqs:
                if seq.prompt_len >= self.runner.max_seq_len:
                    raise ValueError(
                        f"prompt of {seq.prompt_len} tokens exceeds cache {self.runner.max_seq_len}"
                    )
                if seq.sampling.temperature > 0:
                    seq.rng = np.random.default_rng(seq.sampling.seed)
            self._waiting.extend(seqs)
            self._cond.notify_all()

    def cancel(self, seq: Sequence) -> None:
        """Marks ``seq`` cancelled; it leaves its slot (or the queue) at the next iteration."""
        with self._cond:
            seq.cancelled = True
            self._cond.notify_all()

    def free_slots(self) -> int:
        return sum(s is None for s in self._slots)

    def counts(self) -> tuple[int, int]:
        """(running, waiting) sequences."""
        return self.runner.num_slots - self.free_slots(), len(self._waiting)

    # ---- worker -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stop and not self._waiting and all(s is None for s in self._slots):
                        self._cond.wait()
                    if self._stop:
                        break
                self.step()
        except BaseException as err:  # the engine reports it; the loop must not hang requests
            log.exception("scheduler worker failed")
            self.error = err
        finally:
            self._fail_all("abort")

    def step(self) -> None:
        """One iteration: admit waiting sequences into free slots, then one decode step for all occupied
        slots. The worker thread loops over it; tests call it directly, so that time is counted in steps."""
        self._admit()
        self._decode_step()

    def _admit(self) -> None:
        while True:
            with self._cond:
                free = [i for i, s in enumerate(self._slots) if s is None]
                if not free or not self._waiting:
                    return
                seq = self._next_admissible()
                if seq is None:
                    return
                if seq.cancelled:
                    seq.on_finish("abort", seq.stats)
                    continue
                slot = free[0]
                self._slots[slot] = seq
                self.max_running_seen = max(self.max_running_seen, self.runner.num_slots - len(free) + 1)
            seq.stats.scheduled = t0 = time.monotonic()
            logits_v = self.runner.prefill(slot, seq.prompt)
            now = time.monotonic()
            seq.stats.prefill_seconds += now - t0
            self._accept(slot, seq, sample_token(logits_v, seq.sampling, seq.rng), now, seq.prompt_len)

    def _next_admissible(self) -> Sequence | None:
        """Removes and returns the first waiting sequence whose group may take another slot (cancelled ones
        always may: they only leave); None if every waiting group is at its bound. Holds the lock."""
        bound = self.max_running_per_group
        if bound is None:
            return self._waiting.popleft()
        running = collections.Counter(
            id(s.group) for s in self._slots if s is not None and s.group is not None
        )
        for i, seq in enumerate(self._waiting):
            if seq.cancelled or seq.group is None or running[id(seq.group)] < bound:
                del self._waiting[i]
                return seq
        return None

    def _decode_step(self) -> None:
        active = [(i, s) for i, s in enumerate(self._slots) if s is not None]
        for i, s in active:
            if s.cancelled:
                self._finish(i, s, "abort")
        active = [(i, s) for i, s in enumerate(self._slots) if s is not None]
        if not active:
            return
        tokens_b = np.zeros(self.runner.num_slots, np.int32)
        active_b = np.zeros(self.runner.num_slots, bool)
        for i, s in active:
            tokens_b[i] = s.last_token
            active_b[i] = True
        t0 = time.monotonic()
        logits_bv = np.asarray(self.runner.decode(tokens_b, active_b))
        now = time.monotonic()
        self.steps += 1
        for i, s in active:
            s.stats.decode_seconds += now - t0
            length = s.prompt_len + s.generated
            self._accept(i, s, sample_token(logits_bv[i], s.sampling, s.rng), now, length)

    def _accept(self, slot: int, seq: Sequence, token: int, now: float, length: int) -> None:
        """Handles a sampled token; ``length`` = tokens already in the slot's cache."""
        if token in seq.sampling.stop_ids:
            self._finish(slot, seq, "stop")
            return
        seq.generated += 1
        seq.last_token = token
        seq.on_token(token, now)
        # The token just emitted is fed at the next step, so the cache needs length + 1 positions.
        if seq.generated >= seq.sampling.max_new_tokens or length + 1 >= self.runner.max_seq_len:
            self._finish(slot, seq, "length")

    def _finish(self, slot: int, seq: Sequence, reason: str) -> None:
        with self._cond:
            self._slots[slot] = None
        seq.on_finish(reason, seq.stats)

    def _fail_all(self, reason: str) -> None:
        with self._cond:
            pending = [s for s in self._slots if s is not None] + list(self._waiting)
            self._slots = [None] * self.runner.num_slots
            self._waiting.clear()
        for seq in pending:
            seq.stats.error = repr(self.error) if self.error else None
            seq.on_finish(reason, seq.stats)
