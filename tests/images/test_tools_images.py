"""Unit tests of tools.dev.images, the podman CI driver: host facts, mirror discovery, reporting, skipping.

The podman build and smoke runs themselves take minutes and run in CI as `make images-smoke`, not here.
These tests use real files in tmp_path and run the real module; nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.dev.images.base import apt_mirror, base_image_name
from tools.dev.images.host import HostError, HostFacts, os_release_codename
from tools.dev.images.report import Report, StepFailed, StepNotRunnable

REPO = Path(__file__).resolve().parents[2]


def _facts(**changes) -> HostFacts:
    values = dict(
        is_root=True,
        cgroup_mode="hybrid",
        nofile_hard=20000,
        nproc_hard=96365,
        systemd_running=False,
        codename="bookworm",
    )
    return HostFacts(**{**values, **changes})


def test_ulimits_never_exceed_the_hosts_hard_limits():
    assert _facts().ulimits == ("nofile=20000:20000", "nproc=32768:32768")
    assert _facts(nofile_hard=1 << 20, nproc_hard=512).ulimits == ("nofile=65536:65536", "nproc=512:512")


def test_cgroup_manager_follows_systemd():
    assert _facts(systemd_running=False).cgroup_manager == "cgroupfs"
    assert _facts(systemd_running=True).cgroup_manager == "systemd"
    assert _facts().runtime == "runc"


def test_codename_from_os_release(tmp_path):
    release = tmp_path / "os-release"
    release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n')
    assert os_release_codename(release) == "bookworm"
    release.write_text('PRETTY_NAME="Fedora Linux 40"\nID=fedora\nVERSION_CODENAME=""\n')
    with pytest.raises(HostError, match="Fedora"):
        os_release_codename(release)


def _apt_dir(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_mirror_from_deb822_sources(tmp_path):
    apt = _apt_dir(tmp_path)
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment: with a colon\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian http://other.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert apt_mirror("bookworm", apt) == "http://mirror.example/debian"


def test_mirror_skips_disabled_stanzas_and_reads_one_line_lists(tmp_path):
    apt = _apt_dir(tmp_path)
    (apt / "sources.list.d" / "off.sources").write_text(
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n"
    )
    (apt / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/k.gpg] http://list.example/debian bookworm main\n"
    )
    assert apt_mirror("bookworm", apt) == "http://list.example/debian"


def test_no_mirror_for_the_codename_is_a_clear_error(tmp_path):
    apt = _apt_dir(tmp_path)
    (apt / "sources.list").write_text("deb http://list.example/debian bullseye main\n")
    with pytest.raises(HostError, match="bookworm"):
        apt_mirror("bookworm", apt)


def test_base_image_name_is_the_first_from_line():
    assert base_image_name(REPO / "images" / "trainer.Dockerfile") == "python:3.12-slim-bookworm"
    assert base_image_name(REPO / "images" / "server.Dockerfile") == "python:3.12-slim-bookworm"


def test_report_fails_unless_every_step_passed(capsys):
    report = Report()
    with report.step("a"):
        pass
    assert report.exit_code() == 0
    with report.step("b"):
        raise StepNotRunnable("`sawt serve` is not in this source tree yet")
    assert report.exit_code() == 1  # a step that could not run is not a pass
    with report.step("c"):
        raise StepFailed("boom")
    report.not_run("d", "needs c")
    report.print_summary()
    out = capsys.readouterr()
    assert "NOT RUN: `sawt serve` is not in this source tree yet" in out.err
    assert "NOT ALL STEPS PASSED" in out.out
    assert [r.status for r in report.results] == ["PASS", "NOT RUN", "FAIL", "NOT RUN"]


def test_skip_is_explicit_and_loud():
    done = subprocess.run(
        [sys.executable, "-m", "tools.dev.images", "smoke"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "SAWT_SKIP_IMAGES": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "SAWT_SKIP_IMAGES=1" in done.stderr and "NOT" in done.stderr


def test_lint_action_runs_hadolint_and_passes():
    done = subprocess.run(
        [sys.executable, "-m", "tools.dev.images", "lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lint" in done.stdout and "PASS" in done.stdout
