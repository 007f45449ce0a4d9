"""Small NNX building blocks whose parameters carry logical axis names and may be stacked over layers.

`stack` is a tuple of leading dimensions (e.g. `(num_layers,)`); the forward pass of a stacked module runs
inside `jax.lax.scan` on one slice, so `__call__` always sees the unstacked shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02  # HF's initializer_range; real weights come from checkpoints.


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def param(rngs: nnx.Rngs, shape, axes, dtype, init: str = "normal", std: float = INIT_STD) -> nnx.Param:
    """Creates a Param with `axes` metadata; init is normal(std), zeros or ones."""
    assert len(shape) == len(axes), (shape, axes)
    if init == "normal":
        value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "zeros":
        value = jnp.zeros(shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        raise ValueError(init)
    return nnx.Param(value.astype(dtype), axes=tuple(axes))


class Linear(nnx.Module):
    """y = x . kernel (+ bias), contracting the trailing `in_shape` dims of x; kernel [*stack, *in, *out]."""

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: Sequence[str],
        out_axes: Sequence[str],
        *,
        use_bias: bool,
        rngs: nnx.Rngs,
        param_dtype: str,
        compute_dtype: str,
        stack: Sequence[int] = (),
        stack_axes: Sequence[str] = (),
    ):
        self.n_in = len(in_shape)
        self.compute_dtype = compute_dtype
        self.kernel = param(
            rngs, (*stack, *in_shape, *out_shape), (*stack_axes, *in_axes, *out_axes), _dtype(param_dtype)
        )
        if use_bias:
            self.bias = param(
                rngs, (*stack, *out_shape), (*stack_axes, *out_axes), _dtype(param_dtype), "zeros"
            )
        else:
            self.bias = None

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = _dtype(self.compute_dtype)
        y = jnp.tensordot(x.astype(dt), self.kernel[...].astype(dt), axes=self.n_in)
        if self.bias is not None:
            y = y + self.bias[...].astype(dt)
        return y


class RMSNorm(nnx.Module):
    """HF Qwen3 RMSNorm: normalise in fp32, cast back to the input dtype, then multiply by `scale`."""

    def __init__(self, dim, axis_name, *, eps, rngs, param_dtype, stack=(), stack_axes=()):
        self.eps = eps
        self.scale = param(rngs, (*stack, dim), (*stack_axes, axis_name), _dtype(param_dtype), "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * xf.astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with affine scale and bias, computed in fp32."""

    def __init__(self, dim, axis_name, *, eps, rngs, param_dtype, stack=(), stack_axes=()):
        self.eps = eps
        dt = _dtype(param_dtype)
        self.scale = param(rngs, (*stack, dim), (*stack_axes, axis_name), dt, "ones")
        self.bias = param(rngs, (*stack, dim), (*stack_axes, axis_name), dt, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class Embed(nnx.Module):
    """Token embedding table [vocab, embed]."""

    def __init__(self, vocab, dim, *, rngs, param_dtype, compute_dtype):
        self.compute_dtype = compute_dtype
        self.embedding = param(rngs, (vocab, dim), ("vocab", "embed"), _dtype(param_dtype))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(_dtype(self.compute_dtype))


class Conv2d(nnx.Module):
    """3x3 stride-2 padding-1 conv over NHWC input; kernel [3, 3, Cin, C] (HF [C, Cin, 3, 3] permuted)."""

    def __init__(self, c_in, c_out, *, rngs, param_dtype, compute_dtype):
        self.compute_dtype = compute_dtype
        dt = _dtype(param_dtype)
        self.kernel = param(
            rngs,
            (3, 3, c_in, c_out),
            ("kernel_h", "kernel_w", "conv_in", "conv_out"),
            dt,
            std=1 / math.sqrt(9 * c_in),
        )
        self.bias = param(rngs, (c_out,), ("conv_out",), dt, "zeros")

    def __call__(self, x_nhwc: jax.Array) -> jax.Array:
        dt = _dtype(self.compute_dtype)
        y = jax.lax.conv_general_dilated(
            x_nhwc.astype(dt),
            self.kernel[...].astype(dt),
            window_strides=(2, 2),
            padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + self.bias[...].astype(dt)


def remat_policy(name: str):
    """Maps the config's `remat_policy` to a `jax.checkpoint` policy (None = no remat)."""
    if name == "none":
        return None
    return {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    }[name]


def unstack_layers(layers: nnx.Module) -> list[nnx.Module]:
    """The stacked `layers` as one module per layer: the slices of its `[L, ...]` parameters, cut now.

    For a loop that runs the layers many times (a greedy decode): `scan_layers` inside a compiled loop cuts
    (copies) every layer's weights on every iteration (on XLA:CPU with unrolled layers, a quarter of a
    decode's op time). Cut outside the compiled program (`greedy_generate` does it eagerly), the slices are
    separate inputs; cut inside it, XLA sinks them back into the loop body.
    """
    graphdef, states = unstack_layer_states(layers)
    return [nnx.merge(graphdef, s) for s in states]


def unstack_layer_states(layers: nnx.Module) -> tuple[nnx.GraphDef, list[nnx.State]]:
    """`unstack_layers` as (the modules' graphdef, one state per layer), without building the modules."""
    graphdef, state = nnx.split(layers)
    return graphdef, _slice_layers(state)


@jax.jit
def _slice_layers(state):
    # One compiled program: called eagerly, one dispatch instead of one per parameter and layer (with the
    # `small` preset's 48 slices that was ~10% of a greedy decode's CPU time).
    n = jax.tree.leaves(state)[0].shape[0]
    return [jax.tree.map(lambda a, i=i: a[i], state) for i in range(n)]


def scan_layers(layers, body, carry, xs=None, policy: str = "none", unroll: bool = False):
    """Runs `body(layer, carry, x) -> (carry, y)` over the stacked `layers` with `jax.lax.scan`.

    `layers` holds parameters with a leading layer axis; each step merges one slice back into a module.
    `policy` is a `remat_policy` name applied to each step. `unroll` lays the layers out one after another
    in the compiled program (`ModelConfig.unroll_layers`): faster on CPU, longer compiles. `layers` may
    also be the list of `unstack_layers`: then the layers run one after another (no remat, `xs` None).
    """
    if isinstance(layers, list):
        if xs is not None or policy != "none":
            raise ValueError("unstacked layers run without per-layer inputs and without remat")
        ys = []
        for layer in layers:
            carry, y = body(layer, carry, None)
            ys.append(y)
        return carry, None if all(y is None for y in ys) else jax.tree.map(lambda *a: jnp.stack(a), *ys)
    graphdef, state = nnx.split(layers)

    def step(c, args):
        layer_state, x = args
        return body(nnx.merge(graphdef, layer_state), c, x)

    jpolicy = remat_policy(policy)
    if policy != "none":
        step = jax.checkpoint(step, policy=jpolicy, prevent_cse=False)
    return jax.lax.scan(step, carry, (state, xs), unroll=unroll)
