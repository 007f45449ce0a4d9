"""`sawt bench demo`: a fresh run, `make demo`'s summary figures, the child's CPU time and the targets.

The real demo trains for minutes; here a stand-in interpreter plays `python -m tools.demo --out OUT` (writes
the summary.json the real one writes, after checking that the previous run dir is gone).
"""

import stat

import pytest

from bench.demo import run_demo, targets


def _standin(tmp_path, code=0):
    script = tmp_path / "python"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2 $3" = "-m tools.demo --out" ] || exit 9\n'
        '[ -e "$4/run/old" ] && exit 8\n'
        'mkdir -p "$4/report"\n'
        'echo \'{"wer_before": 1.1, "wer_after": 0.3, "train_seconds": 700.0}\' > "$4/report/summary.json"\n'
        f"exit {code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_the_demo_runs_fresh_and_reports_its_summary(tmp_path):
    out = tmp_path / "demo"
    (out / "run").mkdir(parents=True)
    (out / "run" / "old").write_text("a previous run would be resumed")
    (out / "tfrecord").mkdir()
    figures = run_demo(out, python=_standin(tmp_path))
    assert (figures["wer_before"], figures["wer_after"], figures["train_seconds"]) == (1.1, 0.3, 700.0)
    assert figures["demo_user_cpu_s"] >= 0 and figures["demo_system_cpu_s"] >= 0
    assert (out / "tfrecord").is_dir()  # the corpus is kept
    assert targets(figures) == {"train_seconds_within_target": True, "wer_after_within_target": True}
    assert targets({**figures, "train_seconds": 721.0})["train_seconds_within_target"] is False


def test_a_failed_demo_is_an_error_not_a_figure(tmp_path):
    with pytest.raises(RuntimeError, match="code 3"):
        run_demo(tmp_path / "demo", python=_standin(tmp_path, code=3))
