"""What this host offers for running containers, read at run time, and a podman configured for it.

Every setting that depends on the host is derived here from what the host actually reports (cgroup layout,
resource limits, systemd), so that the same code works on CI's machines and on a workstation. podman's
configuration lives in a work folder (``build/podman/``) passed through CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF: nothing system-wide changes.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import subprocess
from pathlib import Path

from tools.dev.images.report import StepFailed, say

# Debian packages that provide the container tools (podman, buildah, runc) and the base image maker.
TOOL_PACKAGES = {"podman": "podman", "buildah": "buildah", "runc": "runc", "debootstrap": "debootstrap"}
# Default container limits wanted when the host's hard limits allow them.
WANTED_NOFILE = 65536
WANTED_NPROC = 32768


class HostError(StepFailed):
    """This host cannot build or run containers; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """Facts about the host that decide how podman must be configured."""

    is_root: bool
    cgroup_mode: str  # "unified" (v2), "hybrid" or "legacy" (v1)
    nofile_hard: int
    nproc_hard: int
    systemd_running: bool
    codename: str

    @property
    def runtime(self) -> str:
        # crun refuses the hybrid cgroup layout ("cgroups in hybrid mode not supported"); runc handles all.
        return "runc"

    @property
    def cgroup_manager(self) -> str:
        # The systemd cgroup manager needs a running systemd; without one podman must manage cgroupfs itself.
        return "systemd" if self.systemd_running else "cgroupfs"

    @property
    def ulimits(self) -> tuple[str, str]:
        # Without CAP_SYS_RESOURCE a container cannot raise a limit above the host's hard limit, and
        # podman's defaults can exceed it ("setrlimit RLIMIT_NOFILE: Operation not permitted").
        nofile = min(WANTED_NOFILE, self.nofile_hard)
        nproc = min(WANTED_NPROC, self.nproc_hard)
        return f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"

    def describe(self) -> str:
        return (
            f"root={self.is_root} cgroups={self.cgroup_mode} nofile_hard={self.nofile_hard} "
            f"nproc_hard={self.nproc_hard} systemd={self.systemd_running} debian={self.codename} "
            f"-> runtime={self.runtime} cgroup_manager={self.cgroup_manager} ulimits={','.join(self.ulimits)}"
        )


def _hard_limit(which: int) -> int:
    hard = resource.getrlimit(which)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def _cgroup_mode() -> str:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "unified"
    return "hybrid" if Path("/sys/fs/cgroup/unified").is_dir() else "legacy"


def os_release_codename(path: Path = Path("/etc/os-release")) -> str:
    """The Debian codename (e.g. 'bookworm') from os-release; raises HostError on a non-Debian host."""
    fields = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip().strip('"')
    codename = fields.get("VERSION_CODENAME", "")
    if fields.get("ID") != "debian" or not codename:
        raise HostError(
            f"{path}: this tool makes its stand-in base image with debootstrap from the host's Debian release, "
            f"but the host is {fields.get('PRETTY_NAME', 'unknown')!r}"
        )
    return codename


def host_facts() -> HostFacts:
    return HostFacts(
        is_root=os.geteuid() == 0,
        cgroup_mode=_cgroup_mode(),
        nofile_hard=_hard_limit(resource.RLIMIT_NOFILE),
        nproc_hard=_hard_limit(resource.RLIMIT_NPROC),
        systemd_running=Path("/run/systemd/system").is_dir(),
        codename=os_release_codename(),
    )


def ensure_tools(facts: HostFacts) -> None:
    """Installs podman, buildah, runc and debootstrap with apt-get where missing (needs root)."""
    missing = sorted({pkg for tool, pkg in TOOL_PACKAGES.items() if shutil.which(tool) is None})
    if not missing:
        return
    if not facts.is_root:
        raise HostError(
            f"missing {', '.join(missing)} and not root: install them (apt-get install {' '.join(missing)})"
        )
    if shutil.which("apt-get") is None:
        raise HostError(f"missing {', '.join(missing)} and there is no apt-get to install them with")
    say(f"    installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise HostError(f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


class Podman:
    """podman and buildah with their configuration and storage in `work_dir`, nothing system-wide."""

    def __init__(self, work_dir: Path, facts: HostFacts) -> None:
        self.work_dir = work_dir.resolve()
        self.facts = facts
        self.logs_dir = self.work_dir / "logs"
        self.containers_conf = self.work_dir / "containers.conf"
        self.storage_conf = self.work_dir / "storage.conf"

    def write_config(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        f = self.facts
        self.containers_conf.write_text(
            "# Written by tools/dev/images/host.py from this host's facts; see docs/images.md.\n"
            "[containers]\n"
            f"default_ulimits = {_toml_list(f.ulimits)}\n"
            "[engine]\n"
            f'runtime = "{f.runtime}"\n'
            f'cgroup_manager = "{f.cgroup_manager}"\n'
            # journald may be absent in CI machines; a file logger needs nothing.
            'events_logger = "file"\n'
        )
        self.storage_conf.write_text(
            "# Written by tools/dev/images/host.py: image storage of CI's podman, under the work folder.\n"
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.work_dir / "storage"}"\n'
            f'runroot = "{self.work_dir / "run"}"\n'
        )

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.containers_conf),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
        }

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, input_bytes: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs `podman ARGS`, capturing output; raises StepFailed with stderr when `check` and it fails."""
        try:
            done = subprocess.run(
                ["podman", *args],
                env=self.env,
                capture_output=True,
                timeout=timeout,
                check=False,
                input=input_bytes,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"podman {' '.join(args)[:200]}: no answer within {timeout:.0f} s") from None
        result = subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )
        if check and result.returncode != 0:
            raise StepFailed(
                f"podman {' '.join(args)[:200]} exited {result.returncode}: {result.stderr.strip()[-1500:]}"
            )
        return result

    def run_logged(self, log_name: str, *args: str, timeout: float) -> int:
        """Runs `podman ARGS` with its output in logs/LOG_NAME; returns the exit status."""
        log_path = self.logs_dir / log_name
        with log_path.open("wb") as log:
            try:
                done = subprocess.run(
                    ["podman", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
                )
            except subprocess.TimeoutExpired:
                raise StepFailed(f"no end within {timeout:.0f} s; {tail(log_path)}") from None
        return done.returncode

    def image_label(self, image: str, label: str) -> str | None:
        """The value of `label` on local `image`, or None when there is no such image."""
        done = self.run(
            "image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', image, check=False
        )
        if done.returncode != 0:
            return None
        return done.stdout.strip()


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, to quote in a failure message."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"(no log at {path})"
    return f"log {path}, last {len(text)} lines:\n" + "\n".join(text)
