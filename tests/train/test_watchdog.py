"""The hang watchdog's allowances on a simulated clock (trainer/watchdog.py); its thread with a real stall.

The end-to-end test (a `sawt train` process that stalls mid-run, exits 42, and resumes bit-identically) is
in tests/train/test_checkpoint_resume.py.
"""

from __future__ import annotations

import io
import threading
import time

from trainer.watchdog import Allowances, Watchdog, thread_stacks

LIMITS = Allowances(multiple=5.0, floor_seconds=10.0, compile_seconds=100.0, eval_seconds=200.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _dog(**kwargs):
    clock, exits, hangs, out = Clock(), [], [], io.StringIO()
    dog = Watchdog(LIMITS, 42, clock=clock, exit=exits.append, on_hang=hangs.append, stream=out, **kwargs)
    return dog, clock, exits, hangs, out


def _steps(dog, clock, seconds: list[float], first: int = 1) -> None:
    for k, dt in enumerate(seconds, start=first):
        dog.begin("step", k)
        clock.now += dt
        assert not dog.poll()
        dog.step_done(dt)


def test_startup_and_first_steps_get_the_compile_allowance():
    dog, clock, exits, _, _ = _dog()
    clock.now = 99.0
    assert not dog.poll()  # start-up: 100 s allowed
    dog.begin("step", 1, compiles=True)
    clock.now += 99.0
    assert not dog.poll()
    dog.step_done(99.0, compiled=True)
    # Fewer than three timed steps: the median is not trusted yet.
    _steps(dog, clock, [1.0, 1.0], first=2)
    dog.begin("step", 4)
    clock.now += 99.0
    assert not dog.poll() and not exits


def test_a_step_past_the_multiple_of_the_median_fires_with_a_report():
    dog, clock, exits, hangs, out = _dog()
    _steps(dog, clock, [3.0, 4.0, 5.0, 4.0])
    assert dog.step_allowance() == 20.0  # 5 x median 4 s
    dog.begin("step", 5)
    clock.now += 20.0
    assert not dog.poll()
    clock.now += 0.5
    assert dog.poll()
    assert exits == [42]
    assert hangs == [
        {
            "phase": "step",
            "step": 5,
            "waited_seconds": 20.5,
            "allowed_seconds": 20.0,
            "median_step_seconds": 4.0,
        }
    ]
    report = out.getvalue()
    assert "no progress in step (step 5) for 20.5 s" in report and "exiting 42 without saving" in report
    assert 'thread "MainThread"' in report and "test_a_step_past_the_multiple" in report
    assert not dog.poll() and exits == [42]  # fires once


def test_the_floor_bounds_fast_steps():
    dog, clock, exits, _, _ = _dog()
    _steps(dog, clock, [0.1] * 10)
    assert dog.step_allowance() == 10.0
    dog.begin("step", 11)
    clock.now += 9.9
    assert not dog.poll()
    clock.now += 0.2
    assert dog.poll() and exits == [42]


def test_eval_checkpoint_and_new_shapes_have_their_own_allowance():
    dog, clock, exits, _, _ = _dog()
    _steps(dog, clock, [1.0] * 5)
    for phase, kwargs, allowed in (
        ("eval", {}, 200.0),
        ("checkpoint", {}, 200.0),
        ("step", {"compiles": True}, 100.0),
    ):
        dog.begin(phase, 6, **kwargs)
        clock.now += allowed - 1
        assert not dog.poll(), phase
    assert not exits
    # A compiling step's time does not enter the median.
    dog.step_done(99.0, compiled=True)
    assert dog.step_allowance() == 10.0


def test_a_hung_on_hang_callback_does_not_stop_the_exit():
    release = threading.Event()
    clock, exits, out = Clock(), [], io.StringIO()
    dog = Watchdog(LIMITS, 42, clock=clock, exit=exits.append, on_hang=lambda h: release.wait(), stream=out,
                   callback_timeout=0.2)  # fmt: skip
    clock.now = 101.0
    t0 = time.monotonic()
    assert dog.poll()
    assert exits == [42] and time.monotonic() - t0 < 5
    release.set()


def test_the_thread_fires_on_a_real_stall():
    exits, out = [], io.StringIO()
    fired = threading.Event()

    def exit_(code):
        exits.append(code)
        fired.set()

    limits = Allowances(multiple=2.0, floor_seconds=0.3, compile_seconds=0.3, eval_seconds=0.3)
    dog = Watchdog(limits, 42, exit=exit_, stream=out).start()
    try:
        for k in range(1, 5):
            dog.begin("step", k)
            time.sleep(0.01)
            dog.step_done(0.01)
        assert not exits
        dog.begin("step", 5)
        assert fired.wait(10), "the watchdog did not fire"
    finally:
        dog.stop()
    assert exits == [42] and 'thread "sawt-watchdog"' in out.getvalue()


def test_thread_stacks_name_every_thread():
    name = "worker-x"
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name=name)
    worker.start()
    try:
        stacks = thread_stacks()
    finally:
        stop.set()
        worker.join()
    assert f'thread "{name}"' in stacks and 'thread "MainThread"' in stacks and "in wait" in stacks
