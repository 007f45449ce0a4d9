"""Goodput and badput from a run's records (trainer/goodput.py), across restarts.

A small simulator plays a run second by second (start-up, restores, compiles, steps with data waits,
evaluations, saves, crashes, downtime) and keeps the truth in its own ledger while it writes the records the
trainer writes; the accounting from the records alone must find the truth again.
"""

from __future__ import annotations

import json
import random

import pytest

from trainer.goodput import CAUSES, GoodputTracker, goodput_of_records, goodput_of_run, main


class Sim:
    """A run's timeline: writes metrics.jsonl-shaped records and the true time of each cause."""

    def __init__(self, log_every: int = 1, t0: float = 1_000.0):
        self.t = t0
        self.start_time = t0
        self.log_every = log_every
        self.records: list[dict] = []
        self.truth = dict.fromkeys(CAUSES, 0.0)
        self.productive_by_step: dict[int, float] = {}  # the surviving time of each step's computation
        self.saved = 0  # last complete checkpoint
        self.step = 0
        self.recorded_step = 0  # last step a step record covers
        self._pending = dict.fromkeys(CAUSES, 0.0)  # truth charged since the last record
        self._span = self._empty_span()

    @staticmethod
    def _empty_span() -> dict:
        return {"n": 0, "seconds": 0.0, "wait": 0.0, "compile": 0.0}

    def rec(self, **fields) -> None:
        self.records.append({"time": self.t, **fields})
        self._pending = dict.fromkeys(CAUSES, 0.0)

    def spend(self, cause: str, seconds: float) -> None:
        self.t += seconds
        self.truth[cause] += seconds
        self._pending[cause] += seconds

    def start(self, downtime: float = 0.0, clean_gap: bool = False) -> None:
        self.t += downtime
        if clean_gap:
            self.start_time += downtime  # a finished run re-run later: the gap is no part of the total
        else:
            self.truth["restart"] += downtime
        process_start = self.t
        self.spend("startup", 1.5)  # imports before the first record
        self.rec(event="start", process_start=process_start)
        self.spend("startup", 2.0)
        if self.saved:
            self.spend("checkpoint_restore", 3.0)
            self.rec(event="resume", step=self.saved, seconds=3.0)
        self.spend("compile", 4.0)  # initialisation under jit
        self.spend("startup", 0.25)
        # Steps after the checkpoint are redone: their time is lost to the restart.
        for s in [s for s in self.productive_by_step if s > self.saved]:
            self.truth["restart"] += self.productive_by_step.pop(s)
        self.step = self.recorded_step = self.saved
        self.rec(event="loop_start", step=self.step, compile_seconds=4.0)
        self._first = True

    def run_steps(self, n: int, rng: random.Random, ckpt_every: int = 5, eval_every: int = 7) -> None:
        for _ in range(n):
            wait, compute = rng.uniform(0.0, 0.3), rng.uniform(0.5, 1.5)
            compile_s = 6.0 if self._first else 0.0
            self._first = False
            self.spend("data_wait", wait)
            self.spend("compile", compile_s)
            self.t += compute
            self.step += 1
            self.productive_by_step[self.step] = compute
            for key, value in (
                ("seconds", wait + compile_s + compute),
                ("wait", wait),
                ("compile", compile_s),
            ):
                self._span[key] += value
            self._span["n"] += 1
            if self.step % self.log_every == 0:
                self.rec(
                    step=self.step,
                    loss=1.0,
                    span_steps=self._span["n"],
                    span_seconds=self._span["seconds"],
                    span_data_wait_seconds=self._span["wait"],
                    span_compile_seconds=self._span["compile"],
                )
                self.recorded_step = self.step
                self._span = self._empty_span()
            self.spend("idle", 0.01)  # host overhead between steps that no record covers
            if self.step % eval_every == 0:
                first_eval = self.step == eval_every
                self.spend("compile", 1.0 if first_eval else 0.0)
                self.spend("eval", 2.5)
                self.rec(event="eval", step=self.step, seconds=3.5 if first_eval else 2.5,
                         compile_seconds=1.0 if first_eval else 0.0)  # fmt: skip
            if self.step % ckpt_every == 0:
                self.spend("checkpoint_save", 0.75)
                self.saved = self.step
                self.rec(event="checkpoint", step=self.step, seconds=0.75)

    def die(self, after_last_record: float) -> None:
        """The process dies: what it did after its last record is unknown, so it counts as the restart's."""
        self.t += after_last_record
        self.truth["restart"] += after_last_record
        for cause, seconds in self._pending.items():
            self.truth[cause] -= seconds
            self.truth["restart"] += seconds
        for s in [s for s in self.productive_by_step if s > self.recorded_step]:
            self.truth["restart"] += self.productive_by_step.pop(s)
        self._pending = dict.fromkeys(CAUSES, 0.0)
        self._span = self._empty_span()

    def end(self, code: int = 0) -> None:
        self.rec(event="end", step=self.step, exit_code=code)

    @property
    def total(self) -> float:
        return self.t - self.start_time

    @property
    def productive(self) -> float:
        return sum(self.productive_by_step.values())


def _check(sim: Sim, result) -> None:
    assert result.total_seconds == pytest.approx(sim.total, abs=1e-6)
    assert result.productive_seconds == pytest.approx(sim.productive, abs=1e-6)
    for cause in CAUSES:
        assert result.badput_seconds[cause] == pytest.approx(sim.truth[cause], abs=1e-6), cause
    parts = result.productive_seconds + sum(result.badput_seconds.values())
    assert parts == pytest.approx(result.total_seconds, abs=1e-6)


def test_one_clean_attempt():
    sim, rng = Sim(), random.Random(0)
    sim.start()
    sim.run_steps(20, rng)
    sim.end()
    result = goodput_of_records(sim.records)
    _check(sim, result)
    assert result.ratio == pytest.approx(sim.productive / sim.total) and 0 < result.ratio < 1
    assert result.badput_seconds["restart"] == 0.0 and result.badput_seconds["checkpoint_restore"] == 0.0


@pytest.mark.parametrize("log_every", [1, 5])
def test_crashes_and_restarts_count_redone_work_and_downtime(log_every):
    sim, rng = Sim(log_every), random.Random(log_every)
    sim.start()
    sim.run_steps(13, rng)  # checkpoint at 10; steps 11-13 are redone
    sim.die(after_last_record=0.4)
    sim.start(downtime=30.0)
    sim.run_steps(9, rng)  # 10 -> 19, checkpoint at 15
    sim.die(after_last_record=2.0)  # a hang of 2 s before the kill
    sim.start(downtime=12.0)
    sim.run_steps(10, rng)
    sim.end()
    result = goodput_of_records(sim.records)
    _check(sim, result)
    assert result.badput_seconds["restart"] > 42.0  # downtime plus the redone steps
    assert result.badput_seconds["checkpoint_restore"] == pytest.approx(6.0)


def test_redone_part_of_a_span_is_prorated():
    """Spans of 4 steps; the restart resumes from step 6, in the middle of the span 5-8."""
    tracker = GoodputTracker()
    tracker.add({"time": 0.0, "event": "start", "process_start": 0.0})
    tracker.add({"time": 1.0, "event": "loop_start", "step": 0, "compile_seconds": 0.0})
    for k, t in ((4, 5.0), (8, 9.0)):
        tracker.add({"time": t, "step": k, "span_steps": 4, "span_seconds": 4.0, "span_data_wait_seconds": 0.0,
                     "span_compile_seconds": 0.0})  # fmt: skip
    tracker.add({"time": 20.0, "event": "start", "process_start": 19.0})
    tracker.add({"time": 21.0, "event": "resume", "step": 6, "seconds": 1.0})
    tracker.add({"time": 22.0, "event": "loop_start", "step": 6, "compile_seconds": 0.0})
    result = tracker.report()
    assert result.productive_seconds == pytest.approx(6.0)  # steps 1-6
    assert result.badput_seconds["restart"] == pytest.approx(2.0 + 10.0)  # steps 7-8, then the 10 s down
    # Steps done again after the restart are productive once more.
    tracker.add({"time": 24.0, "step": 8, "span_steps": 2, "span_seconds": 2.0, "span_data_wait_seconds": 0.0,
                 "span_compile_seconds": 0.0})  # fmt: skip
    assert tracker.report().productive_seconds == pytest.approx(8.0)


def test_rerunning_a_finished_run_is_not_a_restart():
    sim, rng = Sim(), random.Random(2)
    sim.start()
    sim.run_steps(10, rng)
    sim.end(0)
    sim.start(downtime=86_400.0, clean_gap=True)  # a day later, train.steps raised and run again
    sim.run_steps(5, rng)
    sim.end(0)
    result = goodput_of_records(sim.records)
    _check(sim, result)
    assert result.total_seconds < 3_600 and result.badput_seconds["restart"] == 0.0


def test_preempted_attempt_downtime_is_restart():
    sim, rng = Sim(), random.Random(3)
    sim.start()
    sim.run_steps(10, rng)
    sim.end(42)  # SIGTERM: saved at step 10, exit 42
    sim.start(downtime=45.0)
    sim.run_steps(5, rng)
    sim.end(0)
    result = goodput_of_records(sim.records)
    _check(sim, result)
    assert result.badput_seconds["restart"] == pytest.approx(45.0)


def test_incremental_report_equals_replay_at_every_record():
    sim, rng = Sim(3), random.Random(4)
    sim.start()
    sim.run_steps(8, rng)
    sim.die(0.5)
    sim.start(downtime=5.0)
    sim.run_steps(8, rng)
    sim.end()
    tracker = GoodputTracker()
    for i, record in enumerate(sim.records):
        tracker.add(record)
        assert tracker.report() == goodput_of_records(sim.records[: i + 1])


def test_an_attempt_that_dies_while_starting_is_startup_and_restore():
    records = [
        {"time": 10.0, "event": "start", "process_start": 8.0},
        {"time": 15.0, "event": "resume", "step": 5, "seconds": 4.0},
        {"time": 100.0, "event": "start", "process_start": 99.0},
    ]
    result = goodput_of_records(records)
    # 8 -> 15: 4 s restoring, 3 s starting; down from 15 to 99; the new attempt started 1 s ago.
    assert result.badput_seconds["checkpoint_restore"] == 4.0
    assert result.badput_seconds["startup"] == pytest.approx(3.0 + 1.0)
    assert result.badput_seconds["restart"] == pytest.approx(84.0)
    assert result.total_seconds == pytest.approx(92.0) and result.ratio == 0.0
    assert goodput_of_records(records, now=105.0).badput_seconds["startup"] == pytest.approx(3.0 + 6.0)


def test_records_of_older_runs_without_start_events():
    """A run directory written before these records existed: steps with step_seconds only."""
    records = [
        {"time": 10.0 + k, "step": k, "step_seconds": 1.0, "data_wait_seconds": 0.25} for k in range(1, 6)
    ]
    records.append({"time": 20.0, "event": "checkpoint", "step": 5, "seconds": 2.0})
    result = goodput_of_records(records)
    assert result.productive_seconds == pytest.approx(5 * 0.75)
    assert result.badput_seconds["data_wait"] == pytest.approx(5 * 0.25)
    assert result.badput_seconds["checkpoint_save"] == 2.0
    assert result.total_seconds == pytest.approx(10.0)  # from the first step's start (10) to 20
    assert result.badput_seconds["idle"] == pytest.approx(3.0)  # 15 -> 20 less the 2 s save


def test_run_dir_and_command_line(tmp_path, capsys):
    sim, rng = Sim(), random.Random(5)
    sim.start()
    sim.run_steps(6, rng)
    sim.end()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sim.records))
    _check(sim, goodput_of_run(tmp_path))
    assert main([str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["badput_seconds"]) == set(CAUSES) and 0 < out["goodput_ratio"] < 1
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
