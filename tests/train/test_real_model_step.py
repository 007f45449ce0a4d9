"""The train step on the real tiny Thinker (trainer/backend.py), on a hand-built batch of interface 1."""

import jax
import jax.numpy as jnp
import numpy as np

from trainer import optim
from trainer.backend import backend as real_backend
from trainer.config import load_experiment
from trainer.distributed import build_mesh, to_global
from trainer.model.geometry import encoder_token_count
from trainer.train import build_program


def _batch(rows=8, seq=32, frames=100):
    n_audio = encoder_token_count(frames)
    rng = np.random.default_rng(0)
    b = {
        "input_ids": np.zeros((rows, seq), np.int32),
        "loss_mask": np.zeros((rows, seq), np.float32),
        "token_mask": np.zeros((rows, seq), bool),
        "audio_mel": rng.standard_normal((rows, 128, frames)).astype(np.float32),
        "audio_frames": np.full((rows,), frames, np.int32),
        "audio_tokens": np.full((rows,), n_audio, np.int32),
        "audio_offset": np.full((rows,), 2, np.int32),
    }
    for r in range(rows):
        text = list(rng.integers(10, 1000, size=5 + r % 4))
        ids = [1, 3, *([5] * n_audio), 4, 1, *text, 2]
        b["input_ids"][r, : len(ids)] = ids
        b["token_mask"][r, : len(ids)] = True
        b["loss_mask"][r, len(ids) - len(text) - 2 : len(ids) - 1] = 1.0
    b["targets"] = np.concatenate([b["input_ids"][:, 1:], np.zeros((rows, 1), np.int32)], axis=1)
    b["positions"] = np.maximum(np.cumsum(b["token_mask"], axis=1) - 1, 0).astype(np.int32)
    return b


def train_tiny(overrides: list[str], steps: int = 4):
    """The real tiny Thinker trained `steps` steps on `_batch()` through the trainer's own program
    (backend -> build_program -> jitted step), lr 3e-3 without warm-up, plus `overrides`.

    Returns:
        (cfg, the audio tower's proj2 kernel before training, the final state, each step's metrics).
    """
    cfg = load_experiment("tiny", ["optimizer.warmup_steps=0", "optimizer.learning_rate=0.003", *overrides])
    backend = real_backend(cfg)
    mesh = build_mesh(cfg.mesh)
    with jax.set_mesh(mesh):
        program = build_program(cfg, backend, mesh)
        state = jax.jit(
            lambda: {
                **jax.tree.map(jnp.zeros_like, program.abstract_state),
                **_fresh(program, cfg.seed),
            },
            out_shardings=program.shardings,
        )()
        step = program.jitted_step()
        batch = to_global(mesh, _batch())
        audio_before = np.asarray(state["params"]["audio_tower"]["proj2"]["kernel"])
        metrics = []
        for _ in range(steps):
            state, m = step(state, batch)
            metrics.append(m)
    return cfg, audio_before, state, metrics


def test_real_thinker_trains_and_freezes():
    cfg, audio_before, state, metrics = train_tiny(["train.freeze=[audio_encoder]"])
    losses = [float(m["loss"]) for m in metrics]
    m = metrics[-1]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert m["expert_load"].shape == (cfg.model.text.num_experts,)
    np.testing.assert_array_equal(np.asarray(state["params"]["audio_tower"]["proj2"]["kernel"]), audio_before)
    opt_paths = [optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]]
    assert not any("audio_tower" in p for p in opt_paths)
    assert any("model/layers/mlp/experts" in p for p in opt_paths)


def _fresh(program, seed):
    from trainer.train_step import init_state

    return init_state(program.init_params(seed), program.tx, seed)
