"""A converted checkpoint gives the logits that HF PyTorch computes from the original safetensors.

The HF side runs in the reference venv `.venv-ref` (torch + transformers; `make goldens` builds it), through
`bench/hf_ref.py`, on the very directory we convert. It is slow-marked: `make test-slow` builds that venv
first. The default suite covers the same path against committed HF outputs (test_golden_parity.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
REF_PYTHON = REPO / ".venv-ref" / "bin" / "python"

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not REF_PYTHON.exists(), reason="no .venv-ref (torch reference venv): run `make goldens`")
@pytest.mark.parametrize("prefix", ["", "thinker."])
def test_converted_logits_match_hf_pytorch(tmp_path, prefix):
    from flax import nnx

    from tools.dev.synthetic_hf import write_synthetic_hf
    from tools.hf.convert import hf_to_orbax
    from trainer.config import load_experiment
    from trainer.model.geometry import encoder_token_count
    from trainer.model.params import load_param_tree
    from trainer.model.thinker import Thinker
    from trainer.model_checkpoint import load_model_checkpoint

    config = load_experiment("tiny", []).model
    # Weights at O(1) scale: at HF's 0.02 init a tiny model barely depends on its input (dossier §10).
    hf = write_synthetic_hf(tmp_path / "hf", config, prefix=prefix, dtype="fp32", scale=0.3)
    hf_to_orbax(hf, tmp_path / "ckpt", log=lambda *_: None, show_progress=False)
    if prefix:
        # HF's thinker class loads a bare-thinker directory; give it the unprefixed twin of the same bytes.
        from tools.hf.convert import orbax_to_hf

        orbax_to_hf(
            tmp_path / "ckpt", tmp_path / "hf_bare", prefix="", log=lambda *_: None, show_progress=False
        )
        import json

        wrapped = json.loads((hf / "config.json").read_text())
        (tmp_path / "hf_bare" / "config.json").write_text(json.dumps(wrapped["thinker_config"]))
        hf = tmp_path / "hf_bare"

    rng = np.random.default_rng(0)
    ids_tok, frames = config.tokens, 200
    n_audio = int(encoder_token_count(frames, config.audio.n_window))
    prompt = [1, 20, 30, ids_tok.audio_start_token_id] + [ids_tok.audio_token_id] * n_audio
    prompt += [ids_tok.audio_end_token_id, 40, 50, 2, 1, 60, 70]
    ids = np.asarray([prompt], np.int32)
    batch = {
        "input_ids": ids,
        "token_mask": np.ones_like(ids, bool),
        "positions": np.arange(ids.shape[1], dtype=np.int32)[None],
        "audio_mel": (0.5 * rng.standard_normal((1, config.audio.num_mel_bins, frames))).astype(np.float32),
        "audio_frames": np.asarray([frames], np.int32),
        "audio_tokens": np.asarray([n_audio], np.int32),
        "audio_offset": np.asarray([4], np.int32),
    }
    np.savez(tmp_path / "batch.npz", **batch)
    proc = subprocess.run(
        [
            *(str(REF_PYTHON), str(REPO / "bench" / "hf_ref.py"), "logits", "--hf", str(hf)),
            *("--batch", str(tmp_path / "batch.npz"), "--out", str(tmp_path / "hf_logits.npz")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = np.load(tmp_path / "hf_logits.npz")["logits"]

    loaded_config, params = load_model_checkpoint(tmp_path / "ckpt")
    model = Thinker(loaded_config, rngs=nnx.Rngs(0))
    load_param_tree(model, params)
    ours = np.asarray(model(batch).logits)
    assert ours.shape == ref.shape
    assert ref.std() > 0.5  # the comparison means something
    np.testing.assert_allclose(ours, ref, atol=2e-4 * ref.std(), rtol=0)
