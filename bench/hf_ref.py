"""The Hugging Face PyTorch side of the model benchmark and parity checks; runs inside `.venv-ref`.

This file is executed by the reference venv's Python (3.11, torch CPU, transformers; `make goldens` builds
it), so it imports nothing from sawt. It loads a bare-thinker HF directory with
`Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained` and reads a batch from an .npz in our batch
layout (docs/interfaces.md §1):

    python bench/hf_ref.py logits   --hf DIR --batch IN.npz --out OUT.npz
    python bench/hf_ref.py train    --hf DIR --batch IN.npz --steps N --out OUT.json
    python bench/hf_ref.py generate --hf DIR --batch IN.npz --new-tokens N --repeats R --out OUT.json
    python bench/hf_ref.py worker   --hf DIR --train TRAIN.npz --decode DECODE.npz --threads N

`worker` is the peer of `sawt bench model`: it loads the model once, warms up, then answers one request per
line on stdin (`train STEPS`, `generate NEW_TOKENS`, `quit`) with one JSON line on stdout holding the seconds
it measured itself, so the benchmark can interleave our side and this one round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _load(hf_dir: str, threads: int | None = None):
    import torch
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    # The benchmark's thread budget (bench/harness.py: ThreadBudget); by default every core we may use.
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    model = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    return model


def _inputs(batch) -> dict:
    import torch

    mask = torch.from_numpy(batch["token_mask"].astype(np.int64))
    out = {"input_ids": torch.from_numpy(batch["input_ids"].astype(np.int64)), "attention_mask": mask}
    if "audio_mel" in batch:
        mel = batch["audio_mel"]
        frames = batch["audio_frames"]
        out["input_features"] = torch.from_numpy(mel.astype(np.float32))
        out["feature_attention_mask"] = torch.from_numpy(
            (np.arange(mel.shape[-1])[None, :] < frames[:, None]).astype(np.int64)
        )
    return out


def logits(args) -> None:
    import torch

    model = _load(args.hf)
    batch = dict(np.load(args.batch))
    with torch.no_grad():
        out = model(**_inputs(batch))
    np.savez(args.out, logits=out.logits.float().numpy())


def _train_step(model, batch):
    """A function running one forward + backward (loss with the router aux term) on `batch`; returns the loss."""
    import torch

    inputs = _inputs(batch)
    # HF shifts labels itself: label t+1 is what position t predicts, i.e. our targets[t] where loss_mask[t].
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    labels[:, 1:] = np.where(batch["loss_mask"][:, :-1] > 0, batch["targets"][:, :-1], -100)
    inputs["labels"] = torch.from_numpy(labels)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(**inputs, output_router_logits=True)
        out.loss.backward()
        return float(out.loss)

    return step


def train(args) -> None:
    model = _load(args.hf)
    model.train()
    batch = dict(np.load(args.batch))
    step = _train_step(model, batch)
    step()  # warm-up
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    seconds = time.perf_counter() - t0
    tokens = int(batch["token_mask"].sum()) * args.steps
    _write(args.out, {"tokens_per_s": tokens / seconds, "seconds": seconds, "loss": losses[-1]})


def generate(args) -> None:
    import torch

    model = _load(args.hf)
    batch = dict(np.load(args.batch))
    if not batch["token_mask"].all():
        raise SystemExit("generate: rows must have equal length (HF generate needs left padding otherwise)")
    inputs = _inputs(batch)
    n = args.new_tokens
    kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = model.generate(**inputs, **kwargs)
            times.append(time.perf_counter() - t0)
    new = out[:, batch["input_ids"].shape[1] :].numpy()
    seconds = min(times)
    _write(
        args.out,
        {"tokens_per_s": new.size / seconds, "seconds": seconds, "ids": new.tolist()},
    )


def worker(args) -> None:
    """Answers `train STEPS` / `generate NEW_TOKENS` requests from stdin until `quit` (see the docstring)."""
    import sys

    import torch

    # Replies go to the real stdout; anything a library prints goes to stderr instead.
    reply = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr
    model = _load(args.hf, args.threads)
    train_batch = dict(np.load(args.train))
    decode_batch = dict(np.load(args.decode))
    model.train()
    step = _train_step(model, train_batch)
    step()  # warm-up
    model.eval()
    gen_inputs = _inputs(decode_batch)
    with torch.no_grad():
        model.generate(**gen_inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up

    def answer(obj: dict) -> None:
        reply.write(json.dumps(obj) + "\n")
        reply.flush()

    answer({"ready": True, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        op, *rest = line.split()
        if op == "quit":
            break
        n = int(rest[0])
        if op == "train":
            model.train()
            t0 = time.perf_counter()
            losses = [step() for _ in range(n)]
            answer({"seconds": time.perf_counter() - t0, "loss": losses[-1]})
        elif op == "generate":
            model.eval()
            kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)
            with torch.no_grad():
                t0 = time.perf_counter()
                out = model.generate(**gen_inputs, **kwargs)
                seconds = time.perf_counter() - t0
            new = out[:, decode_batch["input_ids"].shape[1] :].numpy()
            answer({"seconds": seconds, "ids": new.tolist()})
        else:
            answer({"error": f"unknown request {op!r}"})


def _write(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("logits", "train", "generate", "worker"))
    parser.add_argument("--hf", required=True)
    parser.add_argument("--batch")
    parser.add_argument("--out")
    parser.add_argument("--train", help="worker: the train batch (.npz)")
    parser.add_argument("--decode", help="worker: the prompt batch (.npz)")
    parser.add_argument("--threads", type=int, help="torch threads (default: every usable core)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    {"logits": logits, "train": train, "generate": generate, "worker": worker}[args.mode](args)


if __name__ == "__main__":
    main()
