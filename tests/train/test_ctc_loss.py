"""The auxiliary CTC loss on the audio encoder's outputs (train.ctc_loss_coef): its maths against optax's
CTC, its place in the thinker's loss, and a real tiny Thinker training with it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from core.errors import ConfigError
from tests.train.test_real_model_step import _batch, train_tiny
from trainer.backend import model_config_for
from trainer.config import load_experiment
from trainer.model.loss import ctc_loss, thinker_loss
from trainer.model.thinker import Thinker

BLANK = 5


def test_ctc_loss_is_optax_ctc_of_the_transcript_without_its_end_token():
    """Row 0: supervised targets [1, 2, 3, <end> 4] on 5 valid audio tokens -> CTC of [1, 2, 3] on those 5.
    Row 1: [1, 1, <end>] needs 3 tokens (a repeat takes a blank between) but has 2 -> left out."""
    targets = np.array([[0, 0, 1, 2, 3, 4, 0, 0], [0, 1, 1, 4, 0, 0, 0, 0]], np.int32)
    mask = np.array([[0, 0, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0, 0, 0]], np.float32)
    valid = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]], bool)
    logits = jax.random.normal(jax.random.key(0), (2, 6, 7))

    got, tokens = ctc_loss(logits, jnp.asarray(valid), jnp.asarray(targets), jnp.asarray(mask), BLANK)

    want = optax.ctc_loss(
        logits[:1, :5], jnp.zeros((1, 5)), jnp.array([[1, 2, 3]]), jnp.zeros((1, 3)), blank_id=BLANK
    )
    assert float(tokens) == 3.0
    np.testing.assert_allclose(float(got), float(want[0]) / 3, rtol=1e-6)


def test_ctc_loss_is_zero_with_no_usable_row():
    targets = np.array([[0, 1, 4, 0]], np.int32)
    mask = np.array([[0, 0, 1, 0]], np.float32)  # only the end token: no label left
    got, tokens = ctc_loss(
        jnp.zeros((1, 3, 7)), jnp.ones((1, 3), bool), jnp.asarray(targets), jnp.asarray(mask), BLANK
    )
    assert float(got) == 0.0 and float(tokens) == 0.0


@pytest.fixture(scope="module")
def tiny_output():
    cfg = load_experiment("tiny", [])
    model = Thinker(model_config_for(cfg), rngs=nnx.Rngs(0))
    batch = _batch()
    return nnx.jit(lambda m, b: m(b))(model, batch), batch


def test_the_thinker_loss_adds_ctc_only_when_asked(tiny_output):
    output, batch = tiny_output
    assert output.audio_logits.shape[:2] == output.audio_valid.shape
    assert output.audio_logits.shape[-1] == output.logits.shape[-1]

    off, m_off = thinker_loss(output, batch, 0.001)
    on, m_on = thinker_loss(output, batch, 0.001, ctc_coef=0.5, blank_id=BLANK)

    assert "ctc" not in m_off
    np.testing.assert_allclose(float(off), float(m_off["ce"] + 0.001 * m_off["aux"]), rtol=1e-6)
    want, _ = ctc_loss(
        output.audio_logits,
        output.audio_valid,
        jnp.asarray(batch["targets"]),
        jnp.asarray(batch["loss_mask"]),
        BLANK,
    )
    assert np.isfinite(float(m_on["ctc"])) and float(m_on["ctc"]) > 0
    np.testing.assert_allclose(float(m_on["ctc"]), float(want), rtol=1e-6)
    np.testing.assert_allclose(float(on), float(off) + 0.5 * float(want), rtol=1e-5)


def test_real_thinker_trains_with_the_ctc_loss_and_reports_it():
    """Through the trainer's own program (backend -> build_program -> jitted step): the step reports `ctc`,
    and it falls; the audio encoder's weights move (CTC reaches them through lm_head)."""
    _, audio_before, state, metrics = train_tiny(["train.ctc_loss_coef=1.0"])
    ctc = [float(m["ctc"]) for m in metrics]
    assert all(np.isfinite(ctc)) and ctc[-1] < ctc[0]
    assert not np.array_equal(np.asarray(state["params"]["audio_tower"]["proj2"]["kernel"]), audio_before)


def test_ctc_with_packed_rows_is_refused_naming_both_keys():
    with pytest.raises(ConfigError, match=r"train\.ctc_loss_coef.*data\.packing"):
        load_experiment("tiny", ["train.ctc_loss_coef=0.5", "data.packing=true"])
