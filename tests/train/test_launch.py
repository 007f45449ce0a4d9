"""The local launcher (trainer/launch.py): how it starts its children."""

import subprocess

from trainer import launch


class _Done:
    """A stand-in child that has already exited 0 (no training is started: only the launch is checked)."""

    def __init__(self, args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def poll(self):
        return 0

    def wait(self):
        return 0

    def send_signal(self, signum):
        pass


def test_children_are_not_pinned_to_cores(monkeypatch):
    """Pinning each process to its own core made the 2-process demo slower (the gloo loop thread then
    competes with its own compute thread on one core; docs/training.md), so children run unpinned."""
    started = []
    monkeypatch.setattr(
        subprocess, "Popen", lambda args, **kw: started.append(_Done(args, **kw)) or started[-1]
    )
    assert launch.launch_local(2, ["--config", "tiny"], cpu_devices=1) == 0
    assert len(started) == 2
    for i, child in enumerate(started):
        assert child.kwargs.get("preexec_fn") is None
        assert child.kwargs["env"]["SAWT_PROCESS_ID"] == str(i)
        assert child.kwargs["env"]["SAWT_NUM_PROCESSES"] == "2"
        assert child.args[-2:] == ["--cpu-devices", "1"]
