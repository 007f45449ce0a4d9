"""A checkpoint made by `sawt convert hf-to-orbax` from a real `save_pretrained` directory gives HF's logits.

The HF directories are the committed parity goldens (tests/goldens/model/<name>/: config.json + safetensors
written by transformers, plus HF's own outputs in reference.npz, built by `make goldens`). Unlike
test_hf_parity.py this needs no torch venv, so it runs in the default suite: it checks the whole conversion
path (key table, transposes, expert and layer stacking, Orbax write and restore) against HF's numbers.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from flax import nnx

from tests.model.helpers import GOLDEN_NAMES, GOLDENS, av_batch, forward, reference
from tools.hf.convert import hf_to_orbax
from trainer.model.params import load_param_tree
from trainer.model.thinker import Thinker
from trainer.model_checkpoint import load_model_checkpoint


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_converted_golden_matches_hf_logits(tmp_path, name):
    hf_dir = tmp_path / "hf"
    shutil.copytree(GOLDENS / name, hf_dir)
    hf_to_orbax(hf_dir, tmp_path / "ckpt", dtype="fp32", log=lambda *_: None, show_progress=False)

    config, params = load_model_checkpoint(tmp_path / "ckpt")
    model = Thinker(config, rngs=nnx.Rngs(0))
    load_param_tree(model, params)

    batch = av_batch(name)
    mask = batch["token_mask"]
    want = reference(name)["av/logits"][mask]
    got = np.asarray(forward(model, batch).logits)[mask]
    assert want.std() > 0.5  # the comparison means something
    assert float(np.max(np.abs(got - want))) <= 1e-4
