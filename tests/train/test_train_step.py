"""The pure train step on the stand-in model: loss falls, freezing, non-finite skips, accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train import standin

from trainer import optim
from trainer.config import load_experiment
from trainer.train_step import init_state, make_train_step


def _setup(*overrides):
    cfg = load_experiment("tiny", ["optimizer.warmup_steps=0", "optimizer.learning_rate=0.01", *overrides])
    params = standin.init_params(0)
    tx, schedule = optim.build_optimizer(cfg.optimizer, 50, params, cfg.train.freeze)
    trainable = optim.trainable_mask(params, cfg.train.freeze)
    step = jax.jit(
        make_train_step(standin.apply, standin.loss, tx, schedule, cfg.train, trainable), donate_argnums=0
    )
    data = standin.StandinData(0, 8, 0, 1)
    return cfg, init_state(params, tx, 0), step, data


def _device_batch(data):
    return {k: jnp.asarray(v) for k, v in next(data).items() if k != "meta"}


def test_loss_decreases_and_metrics_present():
    _, state, step, data = _setup()
    losses = []
    for _ in range(8):
        state, m = step(state, _device_batch(data))
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0]
    assert int(state["step"]) == 8
    assert m["expert_load"].shape == (standin.E,)
    assert float(m["expert_load_min"]) <= float(m["expert_load_max"])
    assert np.isclose(float(jnp.sum(m["expert_load"])), 1.0, atol=1e-5)
    assert float(m["tokens"]) == 8 * 7  # loss_mask covers positions 4..10 of each row
    assert float(m["grad_norm"]) > 0


def test_frozen_groups_keep_params_and_carry_no_optimizer_state():
    _, state, step, data = _setup("train.freeze=[audio_encoder,experts]")
    before = jax.tree.map(np.asarray, state["params"])
    n_opt_leaves = len(jax.tree.leaves(state["opt_state"]))
    state, _ = step(state, _device_batch(data))
    after = state["params"]
    np.testing.assert_array_equal(
        after["audio_tower"]["proj2"]["kernel"], before["audio_tower"]["proj2"]["kernel"]
    )
    np.testing.assert_array_equal(
        after["model"]["layers"]["mlp"]["experts"]["up_proj"],
        before["model"]["layers"]["mlp"]["experts"]["up_proj"],
    )
    assert not np.array_equal(after["lm_head"]["kernel"], before["lm_head"]["kernel"])
    # Unfrozen: 3 Adam leaves (count, mu, nu) per... fewer leaves than an unfrozen optimizer.
    _, full_state, _, _ = _setup()
    assert n_opt_leaves < len(jax.tree.leaves(full_state["opt_state"]))


def test_nonfinite_step_is_skipped_and_counted():
    _, state, step, data = _setup()
    batch = _device_batch(data)
    bad = dict(batch, audio_mel=batch["audio_mel"].at[0, 0, 0].set(jnp.nan))
    before = jax.tree.map(np.asarray, state["params"])
    state, m = step(state, bad)
    assert not bool(m["finite"])
    assert int(m["nonfinite_in_a_row"]) == 1 and int(m["nonfinite_total"]) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state["params"]), before)
    state, m = step(state, batch)
    assert bool(m["finite"]) and int(m["nonfinite_in_a_row"]) == 0 and int(m["nonfinite_total"]) == 1


@pytest.mark.parametrize("remat", ["none", "full"])
def test_grad_accumulation_matches_one_big_batch(remat):
    # The aux loss is not additive over micro-batches, so compare the token-weighted cross-entropy only.
    _, s1, step1, d1 = _setup(f"train.remat={remat}", "train.aux_loss_coef=0")
    _, s2, step2, d2 = _setup("train.grad_accum=4", f"train.remat={remat}", "train.aux_loss_coef=0")
    for _ in range(2):
        s1, m1 = step1(s1, _device_batch(d1))
        s2, m2 = step2(s2, _device_batch(d2))
        assert np.isclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
        assert np.isclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-5)
