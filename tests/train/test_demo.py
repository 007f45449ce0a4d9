"""`make demo`'s training part end to end (slow): synth -> convert -> train small (2 processes) -> report.

The bound is looser than the demo's target (WER <= 35% on held-out test sentences) so that a loaded machine
does not make it flaky; what it checks is that training on real data moves the test WER down a long way.
"""

import json
from pathlib import Path

import pytest

from tools import demo


@pytest.mark.slow
def test_demo_train_lowers_test_wer(tmp_path: Path, capsys):
    assert demo.main(["--out", str(tmp_path), "--steps", "synth,convert,train,report"]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(Path(last_line).read_text())
    assert summary["wer_before"] >= 0.9
    assert summary["wer_after"] <= 0.6
    assert (tmp_path / "report" / "loss.png").is_file() and (tmp_path / "report" / "wer.png").is_file()
