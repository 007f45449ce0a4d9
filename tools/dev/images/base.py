"""A local stand-in for the Dockerfiles' base image (``python:3.12-slim-<codename>``), made without a registry.

debootstrap makes a minimal root file system of the host's own Debian release from the mirror that the host's
apt already uses (read at run time: no mirror or registry name is written in the project). The machine's own
CPython 3.12 (pyenv's build, made on this same Debian release) goes into /usr/local, as in the official image.
The host's apt sources, the apt options its mirror needs, and its CA certificates go in too, because outbound
TLS may be intercepted and pip and apt inside `podman build` must trust that. The result is imported with
`podman import` and tagged under the exact name of the Dockerfiles' ``FROM`` line.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tools.dev.images.host import HostError, HostFacts, Podman, tail
from tools.dev.images.report import StepFailed, say

BASE_KEY_LABEL = "sawt.ci.base-key"
# Bump when the recipe below changes, so that a cached base is rebuilt.
RECIPE_VERSION = "2"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_LOCAL_CAS = Path("/usr/local/share/ca-certificates")
# What the official slim image has besides the interpreter's own libraries.
BASE_PACKAGES = ("ca-certificates", "netbase", "tzdata")
# Parts of a CPython install that the official image deletes too (test suites, byte code, the static
# libpython), GUI modules whose Tk libraries the slim image lacks, and what belongs to this machine only
# (site-packages other than pip; scripts whose #! names the pyenv path).
_SKIP_DIRS_ANYWHERE = {"test", "tests", "idle_test", "__pycache__"}
_SKIP_STDLIB_DIRS = {"idlelib", "tkinter", "turtledemo"}


def find_python312(pyenv_root: Path = Path.home() / ".pyenv") -> Path:
    """The newest pyenv CPython 3.12 install (a prefix with bin/python3.12 and a shared libpython)."""
    candidates = sorted(
        (p for p in (pyenv_root / "versions").glob("3.12.*") if re.fullmatch(r"3\.12\.\d+", p.name)),
        key=lambda p: int(p.name.rsplit(".", 1)[1]),
    )
    for prefix in reversed(candidates):
        if (prefix / "bin" / "python3.12").exists() and (prefix / "lib" / "python3.12" / "os.py").exists():
            return prefix
    raise HostError(
        f"no CPython 3.12 under {pyenv_root}/versions: the stand-in base copies the machine's own 3.12 build "
        "(install one with `pyenv install 3.12`)"
    )


def apt_mirror(codename: str, sources_dir: Path = Path("/etc/apt")) -> str:
    """The URI of the host's apt source that serves `codename` (deb822 *.sources first, then one-line lists)."""
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and codename in fields.get("suites", "").split()
                and fields.get("enabled", "yes").lower() != "no"
            ):
                return fields["uris"].split()[0]
    lists = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            # deb [options] URI SUITE COMPONENTS...
            words = re.sub(r"\[[^\]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == codename:
                return words[1]
    raise HostError(f"no apt source for Debian {codename!r} under {sources_dir}; debootstrap needs a mirror")


def _python_version(prefix: Path) -> str:
    done = subprocess.run(
        [str(prefix / "bin" / "python3.12"), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _shared_libraries(prefix: Path) -> list[Path]:
    binaries = [prefix / "bin" / "python3.12", *prefix.glob("lib/libpython3*.so*")]
    binaries += [
        p for p in (prefix / "lib" / "python3.12" / "lib-dynload").glob("*.so") if "_tkinter" not in p.name
    ]
    libraries: set[Path] = set()
    for binary in binaries:
        done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
        for match in re.finditer(r"=> (/\S+)", done.stdout):
            lib = Path(match.group(1))
            if not lib.is_relative_to(prefix):
                libraries.add(lib)
    return sorted(libraries)


def runtime_packages(prefix: Path) -> list[str]:
    """Debian packages that provide the shared libraries the interpreter and its C modules link against."""
    packages = set(BASE_PACKAGES)
    for lib in _shared_libraries(prefix):
        for path in (lib, lib.resolve()):
            done = subprocess.run(["dpkg", "-S", str(path)], capture_output=True, text=True, check=False)
            if done.returncode == 0:
                packages.add(done.stdout.split(":", 1)[0].strip())
                break
        else:
            raise HostError(f"{lib}: needed by the pyenv Python but owned by no Debian package")
    return sorted(packages)


def _apt_snippets(apt_conf_d: Path = Path("/etc/apt/apt.conf.d")) -> list[Path]:
    # Only the snippets that set download options (e.g. a snapshot mirror's Check-Valid-Until); hooks that
    # call host programs would fail in the image.
    return [
        p
        for p in sorted(apt_conf_d.iterdir())
        if p.is_file() and "Acquire::" in p.read_text(errors="replace") and "Invoke" not in p.read_text()
    ]


def _source_files(apt_dir: Path = Path("/etc/apt")) -> list[Path]:
    files = sorted((apt_dir / "sources.list.d").glob("*.sources")) + sorted(
        (apt_dir / "sources.list.d").glob("*.list")
    )
    main_list = apt_dir / "sources.list"
    if main_list.exists() and main_list.read_text().strip():
        files.insert(0, main_list)
    return files


def base_key(codename: str, mirror: str, python_prefix: Path, python_version: str) -> str:
    """Identifies the inputs of the stand-in base, so that a cached one is reused only when they all match."""
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, codename, mirror, str(python_prefix), python_version):
        h.update(part.encode() + b"\0")
    for path in [HOST_CA_BUNDLE, *sorted(HOST_LOCAL_CAS.glob("*.crt")), *_source_files(), *_apt_snippets()]:
        h.update(str(path).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _copy_python(prefix: Path, usr_local: Path) -> None:
    stdlib = prefix / "lib" / "python3.12"

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        skipped = {n for n in names if n in _SKIP_DIRS_ANYWHERE and (here / n).is_dir()}
        skipped |= {n for n in names if n.endswith((".pyc", ".pyo")) or re.fullmatch(r"libpython.*\.a", n)}
        if here == stdlib:
            skipped |= _SKIP_STDLIB_DIRS & set(names)
        if here == stdlib / "site-packages":
            skipped |= {n for n in names if not (n == "pip" or n.startswith("pip-"))}
        if here == stdlib / "lib-dynload":
            skipped |= {n for n in names if n.startswith("_tkinter")}
        return skipped

    (usr_local / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(prefix / "bin" / "python3.12", usr_local / "bin" / "python3.12")
    for sub in ("lib", "include"):
        shutil.copytree(prefix / sub, usr_local / sub, ignore=ignore, symlinks=True, dirs_exist_ok=True)
    for link, target in (("python3", "python3.12"), ("python", "python3")):
        (usr_local / "bin" / link).symlink_to(target)
    # pyenv's pip scripts name pyenv's path after #!; write plain ones, as the official image has.
    for name in ("pip", "pip3", "pip3.12"):
        script = usr_local / "bin" / name
        script.write_text(
            "#!/usr/local/bin/python3.12\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n"
        )
        script.chmod(0o755)


def _chroot(rootfs: Path, *cmd: str) -> str:
    done = subprocess.run(
        ["chroot", str(rootfs), *cmd], capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        raise StepFailed(
            f"in the stand-in rootfs, {' '.join(cmd)} failed: {(done.stderr or done.stdout)[-1500:]}"
        )
    return done.stdout


def _configure_rootfs(rootfs: Path, python_prefix: Path) -> None:
    etc_apt = rootfs / "etc" / "apt"
    (etc_apt / "sources.list").unlink(
        missing_ok=True
    )  # debootstrap's own line; the host's sources replace it
    for path in _source_files():
        target = etc_apt / path.relative_to("/etc/apt")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        # The keyrings that the sources name must exist in the image too.
        for keyring in re.findall(r"(?:Signed-By:|signed-by=)\s*(/\S+?)(?:[\s\]]|$)", path.read_text()):
            key_target = rootfs / keyring.lstrip("/")
            if Path(keyring).is_file() and not key_target.exists():
                key_target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(keyring, key_target)
    for snippet in _apt_snippets():
        shutil.copy2(snippet, etc_apt / "apt.conf.d" / snippet.name)
    local_cas = rootfs / HOST_LOCAL_CAS.relative_to("/")
    local_cas.mkdir(parents=True, exist_ok=True)
    for crt in sorted(HOST_LOCAL_CAS.glob("*.crt")):
        shutil.copy2(crt, local_cas / crt.name)
    shutil.copy2(HOST_CA_BUNDLE, rootfs / HOST_CA_BUNDLE.relative_to("/"))
    _copy_python(python_prefix, rootfs / "usr" / "local")
    _chroot(rootfs, "/sbin/ldconfig")
    # Every C module must load: a missing Debian library shows here rather than deep inside a build.
    _chroot(
        rootfs,
        "/usr/local/bin/python3",
        "-c",
        "import ssl, sqlite3, ctypes, lzma, bz2, zlib, readline, uuid, hashlib, decimal, venv, ensurepip, pip",
    )
    for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / leftovers).glob("*"):
            if item.is_file():
                item.unlink()


def base_image_name(dockerfile: Path) -> str:
    """The image name on the first FROM line of `dockerfile`."""
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            return next(w for w in words[1:] if not w.startswith("--"))
    raise StepFailed(f"{dockerfile}: no FROM line")


def ensure_base(podman: Podman, facts: HostFacts, from_name: str) -> str:
    """Makes the stand-in base and tags it `from_name`, unless an identical one is cached. Returns a summary."""
    python_prefix = find_python312()
    python_version = _python_version(python_prefix)
    mirror = apt_mirror(facts.codename)
    key = base_key(facts.codename, mirror, python_prefix, python_version)
    if podman.image_label(from_name, BASE_KEY_LABEL) == key:
        return f"cached {from_name} (key {key})"
    if not facts.is_root:
        raise HostError("debootstrap needs root to make the stand-in base image")
    packages = runtime_packages(python_prefix)
    say(
        f"    debootstrap --variant=minbase {facts.codename} (Python {python_version}, {len(packages)} packages)"
    )
    with tempfile.TemporaryDirectory(dir=podman.work_dir, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log = podman.logs_dir / "base-debootstrap.log"
        with log.open("wb") as out:
            done = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(packages)}",
                    facts.codename,
                    str(rootfs),
                    mirror,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=False,
            )
        if done.returncode != 0:
            raise StepFailed(f"debootstrap exited {done.returncode}; {tail(log)}")
        _configure_rootfs(rootfs, python_prefix)
        tar_path = Path(tmp) / "rootfs.tar"
        subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tar_path), "."], check=True
        )
        shutil.rmtree(rootfs)
        local_name = f"localhost/sawt-ci-base:{facts.codename}-py{python_version}"
        ca = str(HOST_CA_BUNDLE)
        changes = [
            "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"ENV PYTHON_VERSION={python_version}",
            f"ENV SSL_CERT_FILE={ca}",
            f"ENV PIP_CERT={ca}",
            f"ENV REQUESTS_CA_BUNDLE={ca}",
            'CMD ["python3"]',
            f"LABEL {BASE_KEY_LABEL}={key}",
        ]
        args = ["import"]
        for change in changes:
            args += ["--change", change]
        podman.run(*args, str(tar_path), local_name, timeout=600)
    podman.run("tag", local_name, from_name)
    return f"built {from_name} from Debian {facts.codename} + CPython {python_version} (key {key})"
