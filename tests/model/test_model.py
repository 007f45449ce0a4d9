"""Model unit tests: MoE dispatch, sharding, placeholder checks, RoPE reduction, configs, param tree, loss."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from core.errors import ConfigError
from tests.model.helpers import (
    GOLDENS,
    av_batch,
    forward,
    golden_config,
    golden_model,
    golden_tree,
    reference,
)
from tools.hf import key_map
from tools.hf.config import model_config_from_hf
from trainer.config import load_experiment
from trainer.model import moe, sharding
from trainer.model.config import ModelConfig
from trainer.model.generate import greedy_generate
from trainer.model.geometry import encoder_token_count
from trainer.model.loss import thinker_loss
from trainer.model.params import abstract_param_tree, load_param_tree, param_tree
from trainer.model.rope import apply_rope, rope_angles
from trainer.model.thinker import AudioPlaceholderError, Thinker, check_audio_placeholders
from trainer.model.tree import flatten, path_name


def test_encoder_token_count_formula():
    assert [encoder_token_count(n) for n in (100, 200, 937, 130, 1000, 3000, 7, 0)] == [
        13, 26, 122, 17, 130, 390, 1, 0,
    ]  # fmt: skip
    np.testing.assert_array_equal(encoder_token_count(np.array([100, 137])), [13, 18])


@pytest.mark.parametrize("impl", ["ragged", "blocked"])
@pytest.mark.parametrize("experts,top_k", [(8, 2), (6, 3), (4, 1)])
def test_sparse_dispatch_equals_dense_reference(impl, experts, top_k):
    """Values and gradients of the sorted dispatch paths equal the every-expert reference."""
    rng = np.random.default_rng(0)
    t, h, i = 37, 16, 8
    x = jnp.asarray(rng.standard_normal((t, h)), jnp.float32)
    gate = jnp.asarray(rng.standard_normal((experts, h, i)) / 4, jnp.float32)
    up = jnp.asarray(rng.standard_normal((experts, h, i)) / 4, jnp.float32)
    down = jnp.asarray(rng.standard_normal((experts, i, h)) / 3, jnp.float32)
    router = jnp.asarray(rng.standard_normal((h, experts)), jnp.float32)

    def run(fn, x, gate, up, down, router):
        _, w, ids = moe.route(x @ router, top_k, True)
        return fn(x, w, ids, gate, up, down)

    dense = jax.jit(run, static_argnums=0)(moe.experts_dense, x, gate, up, down, router)
    ragged = jax.jit(run, static_argnums=0)(moe.IMPLS[impl], x, gate, up, down, router)
    np.testing.assert_allclose(ragged, dense, atol=1e-5)
    grads = [
        jax.jit(jax.grad(lambda *a, fn=fn: jnp.sum(jnp.sin(run(fn, *a))), argnums=(0, 1, 2, 3, 4)))(
            x, gate, up, down, router
        )
        for fn in (moe.experts_dense, moe.IMPLS[impl])
    ]
    for gd, gr in zip(*grads, strict=True):
        np.testing.assert_allclose(gr, gd, atol=1e-5, rtol=1e-5)
    assert float(jnp.abs(grads[1][4]).sum()) > 0  # the router learns through the renormalised weights


def test_sparse_dispatch_scales_with_top_k_not_experts():
    """The grouped matmuls see T*k rows (blocked: plus E*BLOCK padding), not T*E like the dense path."""
    t, k, e = 1000, 2, 64
    x = jnp.ones((t, 4))
    ids = jnp.zeros((t, k), jnp.int32)
    w = jnp.ones((t, k))
    gate, down = jnp.ones((e, 4, 3)), jnp.ones((e, 3, 4))
    jaxpr = jax.make_jaxpr(moe.experts_ragged)(x, w, ids, gate, gate, down)
    shapes = [eqn.outvars[0].aval.shape for eqn in jaxpr.eqns if eqn.primitive.name == "ragged_dot_general"]
    assert len(shapes) == 3 and all(s[0] == t * k for s in shapes), shapes
    jaxpr = jax.make_jaxpr(moe.experts_blocked)(x, w, ids, gate, gate, down)
    rows = [
        eqn.outvars[0].aval.shape[0] * eqn.outvars[0].aval.shape[1]
        for eqn in jaxpr.eqns
        if eqn.primitive.name == "dot_general" and len(eqn.outvars[0].aval.shape) == 3
    ]
    assert len(rows) == 3 and all(r <= t * k + e * moe.BLOCK for r in rows) and max(rows) < t * e // 10, rows


def test_sharded_forward_equals_unsharded():
    """8 fake CPU devices, mesh data x fsdp x expert x tensor = 1x2x2x2: same logits, loss and grads."""
    model = golden_model("tiny_a")
    batch = av_batch("tiny_a")
    want = forward(model, batch)
    want_loss, _ = thinker_loss(want, batch, 0.001)
    auto = (jax.sharding.AxisType.Auto,) * 4  # GSPMD propagation: the model constrains, XLA completes
    mesh = jax.make_mesh((1, 2, 2, 2), sharding.MESH_AXES, axis_types=auto, devices=jax.devices()[:8])
    sharding.shard_model(model, mesh)
    specs = sharding.param_specs(model, mesh)
    assert specs["model"]["layers"]["mlp"]["experts"]["gate_proj"] == jax.sharding.PartitionSpec(
        None, "expert", "fsdp", "tensor"
    )
    arrays = {k: v for k, v in batch.items()}

    @nnx.jit
    def loss_fn(model, batch):
        out = model(batch)
        return thinker_loss(out, batch, 0.001)[0], out.logits

    with jax.set_mesh(mesh):
        loss, logits = loss_fn(model, arrays)
    assert model.model.layers.mlp.experts.gate_proj[...].sharding.spec[1] == "expert"
    mask = batch["token_mask"]
    np.testing.assert_allclose(np.asarray(logits)[mask], np.asarray(want.logits)[mask], atol=1e-4)
    np.testing.assert_allclose(float(loss), float(want_loss), atol=1e-5)


def test_logical_to_spec_drops_axes_that_do_not_divide():
    spec = sharding.logical_to_spec(("kv_heads", "embed"), (4, 2048), {"tensor": 8, "fsdp": 4})
    assert spec == jax.sharding.PartitionSpec(None, ("fsdp",))
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_spec(("nonsense",))


def test_every_param_has_logical_axes():
    model = Thinker(ModelConfig(), rngs=nnx.Rngs(0))
    axes = flatten(sharding.param_logical_axes(model))
    shapes = flatten(param_tree(model))
    assert set(axes) == set(shapes)
    for path, names in axes.items():
        assert len(names) == shapes[path].ndim, path
        assert all(n in sharding.RULES for n in names), (path, names)


def _bad_rows_batch():
    batch = av_batch("tiny_a")
    ids = batch["input_ids"].copy()
    ids[0, batch["audio_offset"][0]] = 11  # one placeholder fewer than the clip's encoder outputs
    return dict(batch, input_ids=ids)


def test_placeholder_count_mismatch_raises_on_host():
    model = golden_model("tiny_a")
    batch = _bad_rows_batch()
    with pytest.raises(AudioPlaceholderError, match="row 0: 25 <\\|audio_pad\\|> placeholders"):
        model(batch)
    with pytest.raises(AudioPlaceholderError, match="audio_tokens"):
        check_audio_placeholders(
            dict(av_batch("tiny_a"), audio_tokens=np.array([26, 18], np.int32)), model.config
        )
    text_only = {"input_ids": np.array([[1, 5, 2]], np.int32)}
    with pytest.raises(AudioPlaceholderError, match="no audio"):
        check_audio_placeholders(text_only, model.config)


def test_placeholder_count_mismatch_poisons_row_in_graph():
    """Inside jit the host check cannot run; the bad row's logits become NaN, the good row is untouched."""
    model = golden_model("tiny_a")
    logits = nnx.jit(lambda m, b: m(b).logits)(model, _bad_rows_batch())
    assert np.isnan(np.asarray(logits[0])).all()
    assert np.isfinite(np.asarray(logits[1])).all()


def test_mrope_with_equal_rows_reduces_to_1d_rope():
    rng = np.random.default_rng(0)
    pos = jnp.asarray(rng.integers(0, 500, (2, 7)), jnp.int32)
    a1 = rope_angles(pos, 32, 1e6)
    a3 = rope_angles(jnp.stack([pos, pos, pos]), 32, 1e6, (6, 5, 5))
    np.testing.assert_array_equal(a1, a3)
    # Distinct rows do change the angles (the 3-row path is live): H feeds frequency 1, W frequency 2.
    a3b = rope_angles(jnp.stack([pos, pos + 1, pos + 2]), 32, 1e6, (6, 5, 5))
    assert not np.allclose(a3b[..., 1], a1[..., 1]) and np.allclose(a3b[..., 0], a1[..., 0])
    x = jnp.asarray(rng.standard_normal((2, 7, 3, 32)), jnp.float32)
    np.testing.assert_allclose(
        jnp.linalg.norm(apply_rope(x, a1), axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
    )


def test_hf_keys_with_or_without_prefix_and_skipped_groups(tmp_path):
    """The import reads a bare thinker's keys and the release's `thinker.`-prefixed ones alike, and skips the
    vision tower, talker and code2wav (counted, not loaded)."""
    from tools.hf.convert import read_hf_params
    from tools.hf.safetensors_io import open_checkpoint, read_tensor, write_safetensors

    raw = {k: read_tensor(v) for k, v in open_checkpoint(GOLDENS / "tiny_a").items()}
    assert any(k.startswith("visual.") for k in raw)  # save_pretrained of a thinker keeps its vision tower
    prefixed = {"thinker." + k: v for k, v in raw.items()}
    prefixed["talker.model.norm.weight"] = np.zeros(3, np.float32)
    prefixed["code2wav.code_embedding.weight"] = np.zeros((2, 3), np.float32)
    write_safetensors(tmp_path, prefixed, max_shard_bytes=200_000)
    shutil.copy(GOLDENS / "tiny_a" / "config.json", tmp_path / "config.json")
    want = flatten(golden_tree("tiny_a"))
    got = flatten(read_hf_params(tmp_path, dtype="fp32")[1])
    assert set(got) == set(want)
    for p in want:
        np.testing.assert_array_equal(got[p], want[p], err_msg=path_name(p))


def test_key_map_slices_invert_exactly():
    """Every leaf's HF tensors rebuild from its slices and back (what makes HF -> Orbax -> HF bit-exact)."""
    from tools.hf.safetensors_io import open_checkpoint, read_tensor

    cfg = golden_config("tiny_b")
    tree = flatten(golden_tree("tiny_b"))
    source = open_checkpoint(GOLDENS / "tiny_b")
    for spec in key_map.leaf_specs(cfg):
        leaf = tree[spec.path]
        for idx, key in spec.hf_keys():
            hf = spec.to_hf(leaf[idx])
            assert hf.shape == spec.hf_shape
            np.testing.assert_array_equal(hf, read_tensor(source[key]).astype(np.float32), err_msg=key)
            np.testing.assert_array_equal(spec.to_canonical(hf), leaf[idx], err_msg=key)


def test_load_param_tree_rejects_mismatch():
    model = Thinker(ModelConfig(), rngs=nnx.Rngs(0))
    tree = jax.tree.map(np.asarray, param_tree(model))
    load_param_tree(model, tree)
    tree["lm_head"]["kernel"] = np.zeros((3, 3), np.float32)
    tree["extra"] = {"w": np.zeros(1)}
    del tree["model"]["norm"]
    with pytest.raises(ValueError, match=r"missing: model/norm/scale.*unexpected: extra/w.*lm_head/kernel"):
        load_param_tree(model, tree)


def test_30b_preset_matches_canonical_shapes_and_hf_config():
    cfg = load_experiment("qwen3-omni-30b-a3b").model
    shapes = {path_name(p): tuple(v.shape) for p, v in flatten(abstract_param_tree(cfg)).items()}
    assert shapes["model/layers/self_attn/q_proj/kernel"] == (48, 2048, 32, 128)
    assert shapes["model/layers/self_attn/o_proj/kernel"] == (48, 32, 128, 2048)
    assert shapes["model/layers/mlp/experts/down_proj"] == (48, 128, 768, 2048)
    assert shapes["audio_tower/conv_out/kernel"] == (7680, 1280)
    assert shapes["audio_tower/layers/self_attn/q_proj/bias"] == (32, 20, 64)
    assert sum(int(np.prod(s)) for s in shapes.values()) == 31_719_205_488 - 538_631_408  # dossier §9
    # The same config, read from an HF config.json in the released (thinker_config) layout.
    hf = json.loads((GOLDENS / "tiny_a" / "config.json").read_text())
    t, a = hf["text_config"], hf["audio_config"]
    t.update(vocab_size=152064, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
             num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
             max_position_embeddings=65536, pad_token_id=None, eos_token_id=[151645, 151643],
             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [24, 20, 20]})  # fmt: skip
    a.update(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
             downsample_hidden_size=480, output_dim=2048)  # fmt: skip
    hf.update(
        audio_token_id=151675, audio_start_token_id=151669, audio_end_token_id=151670, pad_token_id=151643
    )
    got = model_config_from_hf({"thinker_config": hf}, name=cfg.name, param_dtype="bfloat16",
                                     compute_dtype="bfloat16", remat_policy="full")  # fmt: skip
    assert got == cfg


def test_model_config_from_hf_names_missing_key():
    hf = json.loads((GOLDENS / "tiny_a" / "config.json").read_text())
    del hf["text_config"]["num_experts"]
    with pytest.raises(ConfigError, match=r"text_config\.num_experts"):
        model_config_from_hf(hf)
    assert golden_config("tiny_b").audio.window_tokens == 52  # n_window_infer 400 -> 4 chunks of 13
    hf = json.loads((GOLDENS / "tiny_a" / "config.json").read_text())
    hf["text_config"]["mlp_only_layers"] = [1]
    with pytest.raises(ConfigError, match="dense layers"):
        model_config_from_hf(hf)


@pytest.mark.slow
@pytest.mark.parametrize(
    "option", [{"remat_policy": "full"}, {"unroll_layers": True}], ids=["remat", "unroll"]
)
def test_remat_and_unroll_change_no_value_or_gradient(option):
    """Remat (full) and unrolled layers give the same loss and gradients; the router gets a gradient."""
    batch = av_batch("tiny_b")

    def loss_and_grad(model):
        def f(m):
            return thinker_loss(m(batch), batch, 0.001)[0]

        return nnx.jit(nnx.value_and_grad(f))(model)

    base_loss, base_grad = loss_and_grad(golden_model("tiny_b"))
    remat_loss, remat_grad = loss_and_grad(golden_model("tiny_b", **option))
    np.testing.assert_allclose(float(remat_loss), float(base_loss), rtol=1e-6)
    for (p, g1), (_, g2) in zip(flatten(nnx.to_pure_dict(base_grad)).items(),
                                flatten(nnx.to_pure_dict(remat_grad)).items(), strict=True):  # fmt: skip
        np.testing.assert_allclose(g2, g1, atol=1e-5, err_msg=path_name(p))
    router_grad = nnx.to_pure_dict(base_grad)["model"]["layers"]["mlp"]["gate"]["kernel"]
    assert float(jnp.abs(router_grad).sum()) > 0


def test_bf16_compute_stays_close_to_fp32():
    """Same weights, bf16 matmuls: finite logits close to HF's fp32 ones."""
    batch = av_batch("tiny_b")
    bf16 = golden_model("tiny_b", compute_dtype="bfloat16")
    logits = np.asarray(nnx.jit(lambda m, b: m(b).logits)(bf16, batch))
    mask = batch["token_mask"]
    assert np.isfinite(logits[mask]).all()
    assert np.abs(logits[mask] - reference("tiny_b")["av/logits"][mask]).mean() < 0.1


def test_greedy_generate_rejects_left_padded_prompts():
    model = Thinker(ModelConfig(), rngs=nnx.Rngs(0))
    mask = np.array([[False, True, True]])
    batch = {
        "input_ids": np.array([[0, 11, 12]], np.int32),
        "token_mask": mask,
        "positions": np.array([[0, 0, 1]]),
    }
    with pytest.raises(ValueError, match="left-aligned"):
        greedy_generate(model, batch, 4)


def test_greedy_generate_with_unrolled_layers_cut_once_matches_the_scanned_stack():
    """Unrolled layers decode from weights cut once outside the loop (`unstack_layers`): same tokens."""
    from bench.model import asr_batch, prompt_only

    cfg = load_experiment("small", []).model.model_copy(update={"unroll_layers": False})
    scanned = Thinker(cfg, rngs=nnx.Rngs(0))
    unrolled = Thinker(cfg.model_copy(update={"unroll_layers": True}), rngs=nnx.Rngs(0))
    assert unrolled.model.unroll and not scanned.model.unroll
    batch = prompt_only(asr_batch(cfg, 2, 1.0, 2, seed=3))
    ids_a, n_a = greedy_generate(scanned, batch, 6, stop_ids=())
    ids_b, n_b = greedy_generate(unrolled, batch, 6, stop_ids=())
    np.testing.assert_array_equal(np.asarray(ids_a), np.asarray(ids_b))
    np.testing.assert_array_equal(np.asarray(n_a), np.asarray(n_b))


def test_decode_step_with_a_per_layer_cache_and_unstacked_layers_matches_the_stacked_cache():
    """The CPU decode form (one cache buffer per layer, layers cut once) gives the stacked form's logits
    and cache, also for a prefix of the rows (the serving engine's slot buckets)."""
    from bench.model import asr_batch, prompt_only
    from trainer.model import generate
    from trainer.model.layers import unstack_layers

    cfg = load_experiment("small", []).model
    model = Thinker(cfg, rngs=nnx.Rngs(1))
    batch = prompt_only(asr_batch(cfg, 4, 1.0, 2, seed=2))
    _, stacked = generate.prefill(model, batch, batch["input_ids"].shape[1] + 4)
    per_layer = generate.per_layer_cache(stacked)
    assert len(per_layer.k) == cfg.text.num_hidden_layers
    layers = unstack_layers(model.model.layers)
    tokens = jnp.asarray([7, 8, 9], jnp.int32)  # the first 3 of 4 rows
    want, want_cache = generate.decode_step(model, stacked, tokens)
    got, got_cache = generate.decode_step(model, per_layer, tokens, layers=layers)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.stack(got_cache.k), np.asarray(want_cache.k), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got_cache.lengths), np.asarray(want_cache.lengths))
    # Rows put back into a per-layer cache land in every layer's buffer.
    merged = generate.insert_rows(
        generate.init_cache(cfg, 4, stacked.k.shape[3], True), stacked, jnp.arange(4)
    )
    np.testing.assert_array_equal(np.stack(merged.k), np.asarray(stacked.k))
