"""bench/op_profile.py: thunks mapped to the model function they came from, on a real compiled program."""

import jax
import jax.numpy as jnp

from bench.op_profile import classify, hlo_metadata, summarise


def test_named_scopes_survive_into_the_compiled_hlo_forward_and_backward():
    def part(x):
        with jax.named_scope("m:moe.experts_blocked"):
            return jnp.tanh(x @ x.T)

    def loss(x):
        with jax.named_scope("m:thinker.Thinker"):
            return jnp.sum(part(x) ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(jnp.ones((8, 8))).compile().as_text()
    meta = hlo_metadata(hlo)
    labelled = [classify(name, m) for name, m in meta.items()]
    assert ("moe.experts_blocked", "moe.experts_blocked", "forward") in [c[:3] for c in labelled]
    assert ("moe.experts_blocked", "moe.experts_blocked", "backward") in [c[:3] for c in labelled]


def test_a_fusion_without_metadata_takes_its_fused_root_and_controls_are_not_counted_twice():
    hlo = "\n".join(
        [
            "%fused_computation.3 (p: f32[2]) -> f32[2] {",
            '  ROOT %c = f32[2]{0} convolution(%p), metadata={op_name="jit(f)/m:layers.Conv2d/conv"}',
            "}",
            "ENTRY %main (a: f32[2]) -> f32[2] {",
            "  %ynn_fusion.3 = f32[2]{0} fusion(%a), kind=kCustom, calls=%fused_computation.3",
            '  ROOT %dot.1 = f32[2]{0} dot(%a, %a), metadata={op_name="jit(f)/m:attention.dot_attention/dot"}',
            "}",
        ]
    )
    meta = hlo_metadata(hlo)
    assert meta["ynn_fusion.3"]["op_name"].endswith("m:layers.Conv2d/conv")
    events = [("ynn_fusion.3", 300.0), ("dot.1", 100.0), ("while.2", 400.0), ("$python frame", 9.0)]
    r = summarise(events, meta, calls=1)
    assert r["op_ms_per_call"] == 0.4
    assert r["share"]["component"] == {"layers.Conv2d": 0.75, "attention.dot_attention": 0.25}
    assert r["share"]["kind"] == {"ynn_fusion": 0.75, "dot": 0.25}
