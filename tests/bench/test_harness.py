"""The benchmark harness (bench/harness.py): interleaving, the loaded flag, the thread budget, the JSON keys.

Benchmarks are not timed tests: everything here runs on a fake clock and a fake load average, so the tests
assert what the harness does with the numbers, never how fast anything is.
"""

import os
import subprocess
import sys

import pytest

from bench import harness
from bench.harness import (
    CpuMeter,
    LoadCheck,
    LoadedMachineError,
    Samples,
    ThreadBudget,
    bench_run,
    interleave,
    machine_busy_seconds,
    own_cpu_seconds,
    ratio,
)


class FakeClock:
    """A clock that each side advances by its own fixed cost, recording the order the sides ran in."""

    def __init__(self):
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def side(self, name: str, cost: float):
        def run():
            self.calls.append(name)
            self.now += cost

        return run


def test_interleave_alternates_the_sides_round_by_round():
    clock = FakeClock()
    samples = interleave({"a": clock.side("a", 2.0), "b": clock.side("b", 0.5)}, rounds=3, clock=clock)
    assert clock.calls == ["a", "b", "a", "b", "a", "b"]
    assert samples["a"].seconds == [2.0, 2.0, 2.0]
    assert samples["b"].seconds == [0.5, 0.5, 0.5]


def test_interleave_uses_the_seconds_a_side_reports_itself():
    """A peer in another process times its own work; the pipe round trip must not count."""
    clock = FakeClock()
    reported = iter([1.0, 3.0])

    def peer():
        clock.now += 10.0  # wall time including the IPC
        return next(reported)

    samples = interleave({"peer": peer, "ours": clock.side("ours", 1.0)}, rounds=2, clock=clock)
    assert samples["peer"].seconds == [1.0, 3.0]
    assert samples["ours"].seconds == [1.0, 1.0]


def test_interleave_pauses_between_sides_not_inside_the_timing():
    clock = FakeClock()
    slept = []

    def sleep(s):
        slept.append(s)
        clock.now += s

    samples = interleave({"a": clock.side("a", 1.0)}, rounds=2, clock=clock, pause_s=0.25, sleep=sleep)
    assert slept == [0.25, 0.25]
    assert samples["a"].seconds == [1.0, 1.0]


def test_interleave_needs_a_round():
    with pytest.raises(ValueError):
        interleave({"a": lambda: None}, rounds=0)


def test_samples_summary_reports_median_and_spread():
    s = Samples([4.0, 1.0, 2.0, 3.0, 10.0])
    summary = s.summary(work=100.0, unit="tokens_per_s")
    assert summary["median_s"] == 3.0
    assert summary["min_s"] == 1.0 and summary["max_s"] == 10.0
    assert summary["p25_s"] == 2.0 and summary["p75_s"] == 4.0
    assert summary["spread"] == pytest.approx(9.0 / 3.0)
    assert summary["tokens_per_s"] == pytest.approx(100.0 / 3.0)
    assert summary["n"] == 5


def test_ratio_is_peer_over_ours_at_the_medians_and_per_round():
    peer = Samples([2.0, 4.0, 6.0])
    ours = Samples([1.0, 1.0, 2.0])
    r = ratio(peer, ours)
    assert r["median"] == pytest.approx(4.0 / 1.0)
    assert r["min"] == pytest.approx(2.0)
    assert r["max"] == pytest.approx(4.0)
    assert r["round_median"] == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("before", "after", "loaded"),
    [(0.3, 0.9, False), (1.0, 1.0, False), (1.01, 0.2, True), (0.2, 3.5, True)],
)
def test_load_check_marks_a_run_above_half_the_cores(before, after, loaded):
    """Without a CPU meter (no /proc/stat), the load average after the run is judged too."""
    values = iter([before, after])
    check = LoadCheck(cores=2, loadavg=lambda: next(values), meter=None)
    check.start()
    check.finish()
    assert check.loaded is loaded
    assert (check.warning() is not None) is loaded
    assert check.fields() == {
        "load_average_before": before,
        "load_average_after": after,
        "load_average_limit": 1.0,
        "neighbour_cores": None,
        "loaded": loaded,
    }


def fake_meter(machine_s, own_s, wall_s):
    """A CpuMeter whose machine-wide busy time, own CPU time and clock advance by the given amounts."""
    machine, own, clock = iter([100.0, 100.0 + machine_s]), iter([5.0, 5.0 + own_s]), iter([0.0, wall_s])
    return CpuMeter(machine=lambda: next(machine), own=lambda: next(own), clock=lambda: next(clock))


@pytest.mark.parametrize(
    ("machine_s", "own_s", "neighbours", "loaded"),
    [
        # The suite kept both cores busy for 100 s and nothing else ran: the load average after reads ~2,
        # but the run is quiet.
        (200.0, 199.0, 0.01, False),
        # Another job took one and a half cores beside a one-core suite.
        (250.0, 100.0, 1.5, True),
        # Exactly half the cores used by others is still within the limit.
        (200.0, 100.0, 1.0, False),
        # Rounding can make own > machine by a tick: never negative.
        (99.0, 100.0, 0.0, False),
    ],
)
def test_load_check_judges_the_neighbours_cpu_not_the_suites_own(machine_s, own_s, neighbours, loaded):
    values = iter([0.3, 2.1])  # quiet before; after, the suite's own busy threads
    check = LoadCheck(cores=2, loadavg=lambda: next(values), meter=fake_meter(machine_s, own_s, 100.0))
    check.start()
    check.finish()
    assert check.neighbour_cores == pytest.approx(neighbours)
    assert check.loaded is loaded
    assert check.fields()["neighbour_cores"] == pytest.approx(neighbours)
    assert check.fields()["load_average_after"] == 2.1
    if loaded:
        assert "other processes 1.50 cores during" in check.warning()


def test_load_check_still_judges_the_load_before():
    check = LoadCheck(cores=2, loadavg=lambda: 1.7, meter=fake_meter(10.0, 10.0, 100.0))
    check.start()
    check.finish()
    assert check.neighbour_cores == 0.0 and check.loaded is True


def test_cpu_meter_counts_an_unreaped_child_as_a_neighbour_and_a_reaped_one_as_ours():
    """The real meter on this machine. A child that burns a second of CPU and has not been reaped when the
    meter stops is someone else's load: the neighbours' CPU seconds include at least that second (other
    load on the machine only adds to them). Once reaped, its time is this process tree's own."""
    if machine_busy_seconds() is None:
        pytest.skip("no /proc/stat on this platform")
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n"
    meter = CpuMeter()
    meter.start()
    child = subprocess.Popen([sys.executable, "-c", burn])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped
    meter.stop()
    assert meter.neighbour_cores * meter.seconds >= 0.9
    own_before = own_cpu_seconds()
    assert child.wait() == 0
    assert own_cpu_seconds() - own_before >= 0.9


def test_load_check_refuses_a_loaded_machine_when_asked():
    check = LoadCheck(cores=4, loadavg=lambda: 2.5)
    with pytest.raises(LoadedMachineError, match=r"2\.50 is above 2"):
        check.start(refuse=True)
    assert LoadCheck(cores=4, loadavg=lambda: 1.5).start(refuse=True) == 1.5


def test_bench_run_records_machine_load_and_warning():
    values = iter([0.4, 7.0])
    logged = []
    load = LoadCheck(cores=2, loadavg=lambda: next(values), meter=fake_meter(250.0, 100.0, 100.0))
    with bench_run("model", load=load, log=logged.append) as r:
        r["figure"] = 1.0
    assert r["figure"] == 1.0
    assert r["suite"] == "model"
    assert r["load_average_before"] == 0.4 and r["load_average_after"] == 7.0
    assert r["loaded"] is True and r["neighbour_cores"] == 1.5
    assert len(r["warnings"]) == 1 and "loaded machine" in r["warnings"][0]
    assert any("WARNING" in line for line in logged)
    machine = r["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"]


def test_bench_run_quiet_machine_has_no_warning():
    load = LoadCheck(cores=2, loadavg=lambda: 0.1, meter=fake_meter(200.0, 199.0, 100.0))
    with bench_run("data", load=load, log=lambda _: None) as r:
        pass
    assert r["loaded"] is False and r["warnings"] == []


def test_cpu_model_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n")
    assert harness.cpu_model(info) == "AMD EPYC 9B14"
    assert harness.cpu_model(tmp_path / "missing")  # falls back to something, never raises


def test_thread_budget_gives_both_sides_the_same_threads():
    usable = sorted(os.sched_getaffinity(0))
    budget = ThreadBudget.for_threads(1)
    assert budget.threads == 1 and budget.cpus == (usable[0],)
    assert budget.env() == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    assert ThreadBudget.for_threads().threads == len(usable)
    described = budget.describe()
    assert described["threads"] == 1 and "torch.set_num_threads(1)" in described["peer"]
    with pytest.raises(ValueError):
        ThreadBudget.for_threads(len(usable) + 1)


def test_thread_budget_applies_to_a_child_process():
    """The budget pins a process (children inherit it) and sets the BLAS/OpenMP thread counts."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from bench.harness import ThreadBudget\n"
        "ThreadBudget.for_threads(1).apply_here()\n"
        "print(len(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_emit_prints_the_report_and_writes_the_json_when_asked(tmp_path, capsys):
    out = tmp_path / "sub" / "r.json"
    assert harness.emit({"x": 1.5}, "x: 1.5", None) == 0
    assert capsys.readouterr().out == "x: 1.5\n" and not out.exists()
    out.parent.mkdir()
    assert harness.emit({"x": 1.5}, "x: 1.5", str(out)) == 0
    assert capsys.readouterr().out == f"x: 1.5\nwrote {out}\n"
    assert __import__("json").loads(out.read_text()) == {"x": 1.5}


def test_the_data_suite_refuses_a_thread_budget_it_cannot_honour(capsys):
    """bench data times single-threaded paths by design: --threads is refused there, not silently ignored."""
    from sawt.cli import main

    with pytest.raises(SystemExit) as err:
        main(["bench", "data", "--threads", "2"])
    assert err.value.code == 2
    assert "--threads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "model", "--threads", "1", "--help"])
    assert "--threads N" in capsys.readouterr().out


def test_the_serve_suite_applies_its_thread_budget(monkeypatch):
    """bench serve pins itself (and so the servers it starts) to the budget's cores and sets the thread
    counts, instead of recording a budget it never applied."""
    from bench import serve

    pinned = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: pinned.append(set(cpus)), raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(serve, "_run", lambda quick, log, results: None)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    results = serve.run(True, threads=1)
    assert pinned == [{0}]
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert results["thread_budget"]["threads"] == 1 and results["thread_budget"]["cpus"] == [0]
