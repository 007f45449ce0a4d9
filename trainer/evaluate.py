"""Evaluation: greedy decoding on a held-out split, scored by `trainer.asr_metrics` (WER/CER per source).

Every process reads its own shard of the split; the batches are assembled into global arrays so that the
model's own generate path runs sharded exactly as in training, and the generated ids are gathered to every
process before detokenising and scoring (so all processes agree on the result).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from jax.experimental import multihost_utils

from trainer.asr_metrics import score
from trainer.config import EvalConfig
from trainer.distributed import gather_json, to_global

FRAMES_PER_SECOND = 100  # log-mel frames (hop 160 at 16 kHz)

if TYPE_CHECKING:
    from trainer.backend import Backend


def prompt_only(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with each row cut after its prompt (the transcript removed), left-aligned, for decoding.

    A training row is prompt + transcript + <|im_end|>; the prompt ends where the loss starts (the token
    whose target is the first transcript token). Rows without loss tokens keep no tokens at all.
    """
    loss = np.asarray(batch["loss_mask"]) > 0
    has_loss = loss.any(axis=1)
    prompt_len = np.where(has_loss, loss.argmax(axis=1) + 1, 0)
    keep = np.arange(loss.shape[1])[None, :] < prompt_len[:, None]
    out = dict(batch)
    out["token_mask"] = keep & np.asarray(batch["token_mask"]).astype(bool)
    out["input_ids"] = np.where(out["token_mask"], batch["input_ids"], 0).astype(np.int32)
    out["positions"] = np.where(out["token_mask"], batch["positions"], 0).astype(np.int32)
    out["loss_mask"] = np.zeros_like(batch["loss_mask"])
    out["targets"] = np.zeros_like(batch["targets"])
    return out


def evaluate(
    cfg: EvalConfig,
    backend: Backend,
    params: Any,
    mesh: Any,
    process_index: int,
    process_count: int,
    rows: int,
) -> dict[str, Any]:
    """Decodes up to ``cfg.max_batches`` batches per process and scores them.

    Args:
        cfg: the eval section.
        backend: supplies ``make_data``, ``generate`` and ``detokenize``.
        params: the (sharded) canonical parameter tree.
        mesh: the device mesh the batch is laid out on.
        process_index: this process.
        process_count: all processes.
        rows: rows per process per batch.

    Returns:
        `trainer.asr_metrics.score` output plus ``examples`` (a few reference/hypothesis pairs), ``cut``
        (hypotheses that reached their length budget without a stop token) and ``hypotheses``.
    """
    assert backend.generate is not None and backend.detokenize is not None
    data = backend.make_data(cfg.split, process_index, process_count, rows)
    refs: list[str] = []
    hyps: list[str] = []
    sources: list[str] = []
    cut = 0
    for _ in range(cfg.max_batches):
        try:
            local = next(data)
        except StopIteration:
            break
        # The budget follows the bucket's audio length (static, the same on every process).
        seconds = np.shape(local["audio_mel"])[-1] / FRAMES_PER_SECOND
        budget = backend.max_new_tokens_for(seconds) if backend.max_new_tokens_for else cfg.max_new_tokens
        ids = backend.generate(params, to_global(mesh, prompt_only(local)), budget)
        ids = np.asarray(multihost_utils.process_allgather(ids, tiled=True))
        meta = local.get("meta", {})
        valid = (np.asarray(local["loss_mask"]) > 0).any(axis=1).tolist()
        texts = list(meta.get("text", [""] * len(valid)))
        names = list(meta.get("dataset_name", ["all"] * len(valid)))
        gathered = gather_json({"valid": valid, "text": texts, "source": names})
        offset = 0
        for part in gathered:
            for j, ok in enumerate(part["valid"]):
                if ok:
                    refs.append(part["text"][j])
                    sources.append(part["source"][j])
                    hyps.append(backend.detokenize([int(t) for t in ids[offset + j] if t >= 0]))
                    cut += bool((ids[offset + j] >= 0).all())  # no stop token within the budget
            offset += len(part["valid"])
    result = score(refs, hyps, sources)
    result["cut"] = cut
    result["hypotheses"] = len(hyps)
    result["examples"] = [
        {"ref": r, "hyp": h} for r, h in list(zip(refs, hyps, strict=True))[: cfg.log_examples]
    ]
    return result
