"""Test-wide set-up: JAX on CPU with 8 fake devices, so sharding code runs as it would on a slice; the
fixtures several areas share (their code lives in tests/helpers/)."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# gs:// in tests is the GCS emulator, which has no Storage Control API for gcsfs's bucket-layout probe
# (tests/helpers/gcs.py); gcsfs reads this when first imported, whichever test imports it first.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import jax  # after the environment above: JAX reads it at import

jax.config.update("jax_num_cpu_devices", 8)

# `import helpers.x` from any test directory, whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A real model checkpoint (random tiny Thinker + demo tokenizer), built once per session and shared
    by the serve, batch-infer and other end-to-end tests. Read-only: tests must not write into it."""
    from helpers.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt") / "ckpt")


@pytest.fixture(scope="session")
def release_checkpoint(tmp_path_factory):
    """`sawt convert hf-to-orbax` of the release-shaped fixture (tests/helpers/release.py), as stored (bf16).
    Read-only."""
    from helpers.release import release_dir

    from tools.hf.convert import hf_to_orbax

    out = tmp_path_factory.mktemp("release-ckpt") / "ckpt"
    hf_to_orbax(release_dir(), out, log=lambda *_: None, show_progress=False)
    return out
