"""The layout's promises (docs/interfaces.md §10): the import graph reads as the data flows.

- No import cycle among our modules, counting imports made inside functions and through importlib
  (a literal name, an f-string's package prefix, or a module name in a table beside an importlib call).
- `core` imports nothing of ours; nothing imports the CLI (`sawt`) but the CLI; `k8s` imports only `core`;
  shipped code never imports the dev-only code (`tools/dev`, `bench/`) but through a guarded front door.
- `sawt deploy` (render, doctor, --help) runs with jax, transformers and matplotlib unimportable.
- The wheel ships no dev-only code; an installed `sawt bench` says it needs a source checkout.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.deploy import apiserver_stub

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "sawt", "k8s", "trainer", "inference_server", "tools", "bench")
# Run from a checkout, not shipped in the wheel: the dev tooling, and the benchmarks (their peers are dev-only).
DEV_ONLY = ("tools.dev", "bench")
SHIPPED = tuple(p for p in PACKAGES if p not in DEV_ONLY)
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "transformers", "matplotlib", "torch")


def module_files() -> dict[str, Path]:
    """Our module names -> their files (a package is its ``__init__.py``)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``pkg.mod.func`` -> ``pkg.mod``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """Every module of ours that ``module`` imports when it runs, whether at import time or later."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    uses_importlib = False
    strings: set[str] = set()
    prefixes: set[str] = set()  # of f-string module names handed to importlib

    def visit(node: ast.AST) -> None:
        nonlocal uses_importlib
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:  # annotations only: never executed
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(filter(None, (_resolve(a.name, modules) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}", modules) or _resolve(base, modules)
                if target:
                    found.add(target)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and node.args:
                uses_importlib = True
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    if target := _resolve(arg.value, modules):
                        found.add(target)
                elif (
                    isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant)
                ):
                    prefix = str(arg.values[0].value)  # f"sawt.commands.{name}": any module under it
                    prefixes.add(prefix)
                    found.update(m for m in modules if m.startswith(prefix) and m != module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # Names handed to importlib through a table or a variable. Beside an f-string prefix a table holds the
    # names under it (sawt.cli's "bench" is sawt.commands.bench, never the top-level bench), counted above.
    if uses_importlib and not prefixes:
        found.update(s for s in strings if s in modules and s != module)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {m: imports_of(m, p, names) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_sees_lazy_and_importlib_imports(tmp_path):
    """The checker itself: a loop through a function-level import and one through importlib are found."""
    names = {"a", "b", "c", "d"}
    (tmp_path / "a.py").write_text("def f():\n    from b import x\n")
    (tmp_path / "b.py").write_text("import a\n")
    (tmp_path / "c.py").write_text(
        "import importlib\nMODS = {'k': 'd'}\nimportlib.import_module(MODS['k'])\n"
    )
    (tmp_path / "d.py").write_text(
        "from typing import TYPE_CHECKING\nimport c\nif TYPE_CHECKING:\n    import a\n"
    )
    graph = {n: imports_of(n, tmp_path / f"{n}.py", names) for n in sorted(names)}
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}
    assert cycles(graph) == [["a", "b"], ["c", "d"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


# Journeys over the CLI: they run the commands as a user chains them, so they sit beside it on the top floor.
CLI_USERS = ("bench", "tools.demo")
# Shipped modules that import dev-only code behind a guard, and say what is missing when it is
# (test_installed_bench_says_it_needs_a_checkout).
GUARDED_DEV_DOORS = ("sawt.commands.bench",)


def _within(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def test_layers():
    graph = import_graph()
    top = {m: {t.split(".")[0] for t in targets} for m, targets in graph.items()}
    wrong = []
    for module, packages in sorted(top.items()):
        own = module.split(".")[0]
        if own == "core" and packages - {"core"}:
            wrong.append(f"{module} (core) imports {sorted(packages - {'core'})}")
        if own == "k8s" and packages - {"k8s", "core"}:
            wrong.append(f"{module} (k8s) imports {sorted(packages - {'k8s', 'core'})}")
        if own != "sawt" and "sawt" in packages and not _within(module, CLI_USERS):
            wrong.append(f"{module} imports the CLI package sawt")
        dev = {t for t in graph[module] if _within(t, DEV_ONLY)}
        if dev and not _within(module, (*DEV_ONLY, *GUARDED_DEV_DOORS)):
            wrong.append(f"{module} (shipped) imports dev-only {sorted(dev)}")
    assert not wrong, "\n".join(wrong)


def test_skaffold_syncs_every_package_the_server_imports():
    """The dev loop's file sync (skaffold.yaml) covers the server's whole import closure, or an edit to
    (say) trainer/data/longform.py would silently not reach the running server."""
    import yaml

    graph = import_graph()
    seen, todo = set(), ["sawt.commands.serve"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    packages = {m.split(".")[0] for m in seen}
    dev = next(
        p for p in yaml.safe_load((ROOT / "skaffold.yaml").read_text())["profiles"] if p["name"] == "dev"
    )
    synced = {rule["src"].split("/")[0] for patch in dev["patches"] for rule in patch["value"]["manual"]}
    assert packages <= synced, f"not synced: {sorted(packages - synced)}"


# Runs the CLI in a fresh interpreter in which the heavy packages cannot be imported at all.
_WITHOUT_HEAVY = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = set(sys.argv[1].split(","))  # top-level package names

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    if sys.argv[2] == "--import-all":
        import importlib, pkgutil, k8s
        for info in pkgutil.walk_packages(k8s.__path__, "k8s."):
            importlib.import_module(info.name)
        importlib.import_module("sawt.commands.deploy")
        sys.exit(0)
    from sawt.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def run_without_heavy(*argv: str, blocked: tuple[str, ...] = HEAVY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_HEAVY, ",".join(blocked), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_blocker_blocks():
    result = run_without_heavy("train", "--config", "tiny", "train.steps=1")
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_every_deploy_module_imports_without_heavy_packages():
    result = run_without_heavy("--import-all")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("target", ["train", "serve", "monitoring"])
def test_deploy_render_runs_without_heavy_packages(tmp_path, target):
    result = run_without_heavy("deploy", "render", target, "-o", str(tmp_path), "--validate")
    assert result.returncode == 0, result.stderr
    assert sorted(p.suffix for p in tmp_path.iterdir()) and all(
        p.suffix == ".yaml" for p in tmp_path.iterdir()
    )


def test_deploy_doctor_runs_without_heavy_packages(tmp_path):
    """Against the API-server stub (a real API server cannot run here; see tests/deploy/apiserver_stub.py)."""
    state = apiserver_stub.healthy_gke()
    server = apiserver_stub.start(state)
    try:
        kubeconfig = apiserver_stub.write_kubeconfig(tmp_path / "kubeconfig", state.url)
        result = run_without_heavy("deploy", "doctor", "--kubeconfig", str(kubeconfig))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 of 11 checks passed" in result.stdout


def test_deploy_help_runs_without_heavy_packages():
    result = run_without_heavy("deploy", "--help")
    assert result.returncode == 0, result.stderr
    assert "render" in result.stdout


# Folders whose files run as scripts (`python bench/hf_ref.py`, `.venv-ref/bin/python tools/dev/hf_reference/...`):
# Python puts the script's folder first on sys.path, so a module named like a standard one shadows it for the
# script and everything it imports (bench/profile.py broke torch's `import cProfile` in the HF peer).
SCRIPT_DIRS = ("bench", "tools/dev/hf_reference")


@pytest.mark.parametrize("folder", SCRIPT_DIRS)
def test_script_folders_shadow_no_standard_module(folder):
    shadowing = sorted(p.name for p in (ROOT / folder).glob("*.py") if p.stem in sys.stdlib_module_names)
    assert not shadowing, f"{folder}/: {shadowing} shadow standard modules for the scripts run from there"


def test_installed_bench_says_it_needs_a_checkout():
    """As from a wheel install, where bench/ is absent: the CLI still starts, and `sawt bench` explains."""
    assert run_without_heavy("--help", blocked=("bench",)).returncode == 0
    result = run_without_heavy("bench", "data", "--threads", "2", "--json", "x.json", blocked=("bench",))
    assert result.returncode == 2, result.stderr
    assert "sawt bench: error: the benchmarks run from a source checkout" in result.stderr
    assert "make setup" in result.stderr


def test_wheel_ships_no_dev_tooling(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("sawt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("sawt-")}
    assert tops == set(SHIPPED)
    assert not [n for n in names if n.startswith(("tools/dev/", "bench/"))]
    assert not [n for n in names if n.startswith("tests/")]
    # What a user runs is there: the CLI, the deploy wing's data, the product tools.
    for expected in ("sawt/cli.py", "k8s/render.py", "k8s/templates/", "tools/hf/", "tools/data/"):
        assert any(n.startswith(expected) for n in names), expected
