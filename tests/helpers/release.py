"""The release-shaped fixture: a tiny full Qwen3-Omni checkpoint laid out like the published release.

`tools/dev/hf_reference/release_fixture.py` (`make goldens`, torch venv) builds it with transformers and commits
it as `tests/goldens/release/qwen3-omni-tiny.tar.xz` (the directory, byte for byte), with transformers'
thinker outputs in `reference.npz`. `release_dir()` extracts it once per archive version into the temp
directory and returns the path; treat it as read-only (copy it first to change anything).

From a shell: `.venv/bin/python -m tests.helpers.release` prints the path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parents[1] / "goldens" / "release"
NAME = "qwen3-omni-tiny"
ARCHIVE = GOLDEN / f"{NAME}.tar.xz"


def meta() -> dict:
    return json.loads((GOLDEN / "meta.json").read_text())


@functools.cache
def release_dir() -> Path:
    """The extracted fixture directory (verified against the builder's sha256 of every file)."""
    digest = hashlib.sha256(ARCHIVE.read_bytes()).hexdigest()[:16]
    root = Path(tempfile.gettempdir()) / f"sawt-release-fixture-{digest}"
    target = root / NAME
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=f"{root.name}.", dir=root.parent))
        with tarfile.open(ARCHIVE, "r:xz") as tar:
            tar.extractall(staging, filter="data")
        expected = meta()["sha256"]
        for name, sha in expected.items():
            got = hashlib.sha256((staging / NAME / name).read_bytes()).hexdigest()
            if got != sha:
                raise RuntimeError(f"{ARCHIVE}: {name} does not match meta.json (sha256 {got})")
        try:
            os.rename(staging, root)  # atomic: concurrent test processes race here, one wins
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def copy_release(dest: Path) -> Path:
    """A private, writable copy of the fixture at ``dest``."""
    shutil.copytree(release_dir(), dest)
    return dest


@functools.cache
def reference() -> dict[str, np.ndarray]:
    """transformers' outputs of the fixture's thinker (see the builder's docstring)."""
    with np.load(GOLDEN / "reference.npz") as data:
        return {k: data[k] for k in data.files}


if __name__ == "__main__":
    print(release_dir())


def reference_batch() -> dict[str, np.ndarray]:
    """The reference's padded audio+text batch in the loader's format (docs/interfaces.md §1).

    Features come from HF's WhisperFeatureExtractor configured by the fixture's preprocessor_config.json
    (numpy path, per clip), exactly as the builder computed them.
    """
    from transformers import WhisperFeatureExtractor

    from tools.dev.hf_reference.make_goldens import features, waveform
    from trainer.model.geometry import encoder_token_count

    ref = reference()
    fe = WhisperFeatureExtractor.from_pretrained(str(release_dir()))
    mels = [features(fe, waveform(float(s))) for s in ref["clip_seconds"]]
    frames = np.array([m.shape[1] for m in mels], np.int32)
    assert frames.tolist() == ref["frames"].tolist()
    width = -(-int(frames.max()) // 100) * 100
    audio_mel = np.zeros((len(mels), 128, width), np.float32)
    for b, m in enumerate(mels):
        audio_mel[b, :, : m.shape[1]] = m
    ids = ref["input_ids"]
    mask = ref["attention_mask"].astype(bool)
    audio_pad = 151675
    return {
        "input_ids": ids.astype(np.int32),
        "token_mask": mask,
        "positions": (np.maximum(np.cumsum(mask, axis=1) - 1, 0) * mask).astype(np.int32),
        "audio_mel": audio_mel,
        "audio_frames": frames,
        "audio_tokens": encoder_token_count(frames).astype(np.int32),
        "audio_offset": np.argmax(ids == audio_pad, axis=1).astype(np.int32),
    }


def logits_at_reference(logits: np.ndarray) -> dict[str, np.ndarray]:
    """The parts of [B, S, V] logits the reference stores: the picked columns, logsumexp and argmax."""
    ref = reference()
    picked = np.stack([logits[b, ref["positions"][b]] for b in range(logits.shape[0])]).astype(np.float64)
    top = picked.max(-1, keepdims=True)
    return {
        "logits": picked[:, :, ref["columns"]],
        "logsumexp": (np.log(np.exp(picked - top).sum(-1)) + top[..., 0]),
        "argmax": picked.argmax(-1),
    }
