"""Test-only stand-in model and data for the trainer's loop, checkpoint and multi-process tests.

They keep the binding interfaces (canonical parameter paths, the batch dict, loss metrics with `ce`, `aux`,
`tokens`, `expert_load`) at a size that trains in milliseconds on a shared 2-core box, so the tests of
checkpointing, resume and multi-process runs stay cheap. The real model and loader are tested by their
owners and end to end by `sawt train --config tiny`.

Selected with the hidden `sawt train --plugin tests.train.standin` option. ``STANDIN_STALL_AT_BATCH=N`` makes
the training data hang forever when asked for batch N (for the hang watchdog's test).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

V, H, E, L, S = 64, 16, 4, 2, 12


def init_params(seed: int) -> dict[str, Any]:
    k = jax.random.split(jax.random.key(seed), 5)
    n = lambda key, shape: 0.2 * jax.random.normal(key, shape, jnp.float32)  # noqa: E731
    return {
        "audio_tower": {"proj2": {"kernel": n(k[0], (8, H)), "bias": jnp.zeros((H,))}},
        "model": {
            "embed_tokens": {"embedding": n(k[1], (V, H))},
            "layers": {
                "mlp": {
                    "gate": {"kernel": n(k[2], (L, H, E))},
                    "experts": {"up_proj": n(k[3], (L, E, H, H))},
                },
                "input_layernorm": {"scale": jnp.ones((L, H))},
            },
            "norm": {"scale": jnp.ones((H,))},
        },
        "lm_head": {"kernel": n(k[4], (H, V))},
    }


def apply(params: dict[str, Any], batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    x = params["model"]["embed_tokens"]["embedding"][batch["input_ids"]]  # [B,S,H]
    audio = batch["audio_mel"][:, :8, :].mean(-1) @ params["audio_tower"]["proj2"]["kernel"]
    x = x + audio[:, None, :] + params["audio_tower"]["proj2"]["bias"]
    layers = params["model"]["layers"]
    loads = []
    for i in range(L):
        h = x * layers["input_layernorm"]["scale"][i]
        probs = jax.nn.softmax(h @ layers["mlp"]["gate"]["kernel"][i], axis=-1)  # [B,S,E]
        experts = jnp.einsum("bsh,ehf->bsef", h, layers["mlp"]["experts"]["up_proj"][i])
        x = x + jnp.tanh(jnp.einsum("bse,bsef->bsf", probs, experts))
        loads.append(probs)
    x = x * params["model"]["norm"]["scale"]
    return {"logits": (x @ params["lm_head"]["kernel"]).astype(jnp.float32), "router_probs": jnp.stack(loads)}


def loss(output: dict[str, jax.Array], batch: dict[str, jax.Array], aux_coef: float):
    logp = jax.nn.log_softmax(output["logits"], axis=-1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"]
    tokens = mask.sum()
    ce = (nll * mask).sum() / jnp.maximum(tokens, 1.0)
    valid = batch["token_mask"][None, :, :, None].astype(jnp.float32)
    load = (output["router_probs"] * valid).sum((1, 2)) / jnp.maximum(valid.sum((1, 2)), 1.0)  # [L,E]
    aux = E * jnp.sum(load * load) / L
    return ce + aux_coef * aux, {"ce": ce, "aux": aux, "tokens": tokens, "expert_load": load}


def _stall() -> None:
    """A hang, as in a collective whose peer never comes or a read that never returns (the watchdog test)."""
    threading.Event().wait()


class StandinData:
    """Deterministic synthetic batches; row r of the global stream depends only on (seed, r).

    Process p of P yields rows [p*B/P, (p+1)*B/P) of each global batch of B rows, so any process count
    sees the same global batches. State: the number of batches already yielded.
    """

    def __init__(self, seed: int, global_batch: int, process_index: int, process_count: int):
        self.seed, self.global_batch = seed, global_batch
        self.rows = global_batch // process_count
        self.first_row = process_index * self.rows
        self.next_batch = 0

    def __iter__(self) -> StandinData:
        return self

    def __next__(self) -> dict[str, Any]:
        stall_at = os.environ.get("STANDIN_STALL_AT_BATCH")
        if stall_at is not None and self.next_batch == int(stall_at) and type(self) is StandinData:
            _stall()
        base = self.next_batch * self.global_batch + self.first_row
        rows = [self._row(base + j) for j in range(self.rows)]
        self.next_batch += 1
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        batch["meta"] = {"dataset_name": ["standin"] * self.rows, "text": [""] * self.rows}
        return batch

    def _row(self, r: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, r])
        start = int(rng.integers(10, V - S - 2))
        ids = (start + np.arange(S)) % V  # a counting sequence: learnable next-token targets
        targets = np.roll(ids, -1)
        loss_mask = np.zeros(S, np.float32)
        loss_mask[4 : S - 1] = 1.0
        return {
            "input_ids": ids.astype(np.int32),
            "targets": targets.astype(np.int32),
            "loss_mask": loss_mask,
            "token_mask": np.ones(S, bool),
            "positions": np.arange(S, dtype=np.int32),
            "audio_mel": rng.standard_normal((8, 100)).astype(np.float32),
            "audio_frames": np.int32(100),
            "audio_tokens": np.int32(2),
            "audio_offset": np.int32(1),
        }

    def get_state(self) -> dict[str, int]:
        return {"next_batch": self.next_batch}

    def set_state(self, state: dict[str, int]) -> None:
        self.next_batch = int(state["next_batch"])


def model_config() -> dict[str, Any]:
    return {"name": "standin", "vocab_size": V, "hidden": H, "experts": E, "layers": L}


@jax.jit
def generate(params: dict[str, Any], batch: dict[str, Any]) -> jax.Array:
    """Greedy continuation of each prompt (rows are left-aligned) to the end of the row; -1 elsewhere."""
    ids, mask = batch["input_ids"], batch["token_mask"]
    start = jnp.sum(mask, axis=1)  # prompt length per row
    out = jnp.full(ids.shape, -1, jnp.int32)
    for pos in range(1, S):
        nxt = jnp.argmax(apply(params, dict(batch, input_ids=ids))["logits"][:, pos - 1], axis=-1)
        fill = pos >= start
        ids = ids.at[:, pos].set(jnp.where(fill, nxt, ids[:, pos]).astype(ids.dtype))
        out = out.at[:, pos].set(jnp.where(fill, nxt, -1).astype(jnp.int32))
    return out


def detokenize(ids: list[int]) -> str:
    return " ".join(str(t) for t in ids)


class _EvalData(StandinData):
    def __next__(self) -> dict[str, Any]:
        batch = super().__next__()
        mask = batch["loss_mask"] > 0
        batch["meta"]["text"] = [
            " ".join(str(t) for t in row[m]) for row, m in zip(batch["targets"], mask, strict=True)
        ]
        return batch


def load_params(path: str) -> dict[str, Any]:
    """Params of a model checkpoint, run dir or step dir, through trainer.model_checkpoint's resolver."""
    from trainer.model.tree import unflatten
    from trainer.model_checkpoint import PARAMS_DIR, read_params, resolve_checkpoint

    return unflatten(read_params(resolve_checkpoint(path) / PARAMS_DIR))


def backend(cfg: Any) -> Any:
    from trainer.backend import Backend

    def make_data(split: str, process_index: int, process_count: int, rows: int) -> StandinData:
        cls = StandinData if split == "train" else _EvalData
        seed = cfg.seed if split == "train" else cfg.seed + 1000
        return cls(seed, rows * process_count, process_index, process_count)

    return Backend(
        init_params=init_params,
        apply=apply,
        loss=loss,
        model_config=model_config(),
        make_data=make_data,
        generate=lambda p, b, n: generate(p, b),
        load_params=load_params,
        detokenize=detokenize,
    )
