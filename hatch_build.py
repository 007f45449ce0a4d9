"""Hatchling build hook: compiles trainer/data/_example_fast.c, the C fast path of the Example decoder.

Uses only the standard library and the interpreter's own compiler settings (`sysconfig`: CC, CFLAGS,
CCSHARED, LDSHARED, the include directory and EXT_SUFFIX), so any machine with a C compiler and Python.h
builds it; no numpy headers are needed (the module reaches numpy through Python callables).

- Editable installs (``pip install -e .``, what ``make setup`` runs) build the module in place, next to the
  source, where the editable ``.pth`` finds it.
- Wheels (``pip install .``, ``pip wheel .``) get the module built in a temporary folder and added to the
  wheel, which is then tagged for this interpreter and platform (no longer pure Python).
- Without a compiler (or Python.h) the build prints a warning and makes a pure-Python package: the
  decoder falls back to its Python fast path (slower, same results). ``SAWT_REQUIRE_FAST_CODEC=1`` turns
  that warning into a build error (the container images set it).

Run it directly (``.venv/bin/python hatch_build.py``) to rebuild the module in place without reinstalling.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("trainer/data/_example_fast.c")
REQUIRE_ENV = "SAWT_REQUIRE_FAST_CODEC"


class BuildError(RuntimeError):
    """The C module could not be built."""


def module_name() -> str:
    """The extension's file name for this interpreter, e.g. ``_example_fast.cpython-312-x86_64-linux-gnu.so``."""
    return SOURCE.stem + sysconfig.get_config_var("EXT_SUFFIX")


def _config_words(name: str) -> list[str]:
    return shlex.split(sysconfig.get_config_var(name) or "")


def compile_module(root: Path, out_dir: Path) -> Path:
    """Compiles the module from ``root``/SOURCE into ``out_dir``; returns the built file.

    Raises:
        BuildError: no compiler, no Python.h, or the compiler failed (its output is in the message).
    """
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        raise BuildError(f"no C compiler found (tried {cc[0] if cc else 'cc'!r})")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise BuildError(f"Python.h not found in {include} (install the Python development headers)")
    ldshared = _config_words("LDSHARED") or [*cc, "-shared"]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / module_name()
    with tempfile.TemporaryDirectory(prefix="sawt-cext-") as tmp:
        obj = Path(tmp) / "_example_fast.o"
        tmp_target = Path(tmp) / target.name
        compile_cmd = [
            *cc,
            *_config_words("CFLAGS"),
            *_config_words("CCSHARED"),
            "-O2",
            "-g0",
            "-I",
            include,
            "-c",
            str(root / SOURCE),
            "-o",
            str(obj),
        ]
        link_cmd = [*ldshared, str(obj), "-o", str(tmp_target)]
        for cmd in (compile_cmd, link_cmd):
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BuildError(f"{shlex.join(cmd)} failed:\n{done.stdout}{done.stderr}")
        # Replace, never overwrite in place: a running process may have the old file mapped.
        os.replace(shutil.copy2(tmp_target, out_dir / f".{target.name}.tmp"), target)
    return target


def _fallback_or_raise(error: BuildError, warn) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        raise RuntimeError(f"sawt: cannot build the C Example decoder ({REQUIRE_ENV}=1): {error}") from error
    warn(
        f"sawt: WARNING: building without the C Example decoder ({error}); "
        "trainer.data.example falls back to pure Python (same results, about 5x slower Example decoding). "
        f"Install a C compiler and the Python headers, or set {REQUIRE_ENV}=1 to make this an error."
    )


class CustomBuildHook(BuildHookInterface):
    """Builds the C module for wheel targets (editable: in place; standard: into the wheel)."""

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        try:
            if version == "editable":
                compile_module(root, root / SOURCE.parent)
                return
            self._tmp = tempfile.mkdtemp(prefix="sawt-wheel-cext-")
            built = compile_module(root, Path(self._tmp))
        except BuildError as e:
            _fallback_or_raise(e, self._warn)
            return
        build_data["force_include"][str(built)] = (SOURCE.parent / built.name).as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        if getattr(self, "_tmp", None):
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _warn(self, message: str) -> None:
        # pip hides a backend's output unless it fails (or runs with -v), so say it on stderr as well.
        print(message, file=sys.stderr)
        self.app.display_warning(message)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    try:
        print(compile_module(here, here / SOURCE.parent))
    except BuildError as e:
        sys.exit(f"error: {e}")
