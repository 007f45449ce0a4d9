"""Running the server: the engine from a checkpoint, and uvicorn with a SIGTERM handler that drains.

On SIGTERM (Kubernetes stopping the pod) the server marks itself draining (`/ready` → 503 so the Service
stops routing to it, new transcriptions → 503), stops accepting connections, lets in-flight requests finish
for up to ``drain_grace_s``, then stops the engine and exits.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from inference_server.config import ServerConfig

log = logging.getLogger("sawt.serve")


def build_engine(checkpoint: str | Path, config: ServerConfig, *, max_seq_len: int | None = None):
    """A `ModelEngine` for a checkpoint; loading the weights happens in `start`.

    ``checkpoint``: a model checkpoint (docs/interfaces.md §6), a trainer step directory, or a run directory
    (its best step by validation WER, else its latest). The tokenizer and the prompt's wording are the ones
    the run trained with (``RUN/model/``), the audio geometry the checkpoint's model_config.json, and each
    window's generation budget follows its duration (trainer/data/length.py).
    """
    from inference_server.model_engine import ModelEngine, TextSide
    from trainer.data.length import budget_for
    from trainer.model_checkpoint import (
        checkpoint_path,
        checkpoint_prompt,
        companion_dir,
        load_model_checkpoint,
        load_model_config,
    )

    checkpoint = checkpoint_path(checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint}: checkpoint directory not found")
    model_dir = _resolve(checkpoint)
    model_config = load_model_config(model_dir)
    prompt = checkpoint_prompt(model_dir, model_config, given=checkpoint)
    log.info(
        "serving %s (resolved from %s) with instruction %r (%s)",
        model_dir,
        checkpoint,
        prompt.style.instruction,
        prompt.source,
    )
    text_side = TextSide.from_tokenizer(
        prompt.tokenizer,
        tuple(model_config.tokens.eos_token_ids),
        style=prompt.style,
        max_context_tokens=config.max_prompt_tokens,
    )
    budget = budget_for(prompt.tokenizer, companion_dir(checkpoint, model_dir), config.max_new_tokens)
    log.info(
        "generation budget: %.2f tokens/s of audio (%s), at most %d",
        budget.tokens_per_second,
        budget.source,
        budget.cap,
    )
    # Prefill widths: prompts without a context, and (when prompts are on) with the longest one kept.
    overheads = [text_side.prompt_overhead() + 8]
    if config.max_prompt_tokens:
        overheads.append(text_side.prompt_overhead(config.max_prompt_tokens) + 8)

    def make_runner():
        from inference_server.jax_runner import JaxRunner

        model_config, params = load_model_checkpoint(model_dir)
        return JaxRunner(
            model_config,
            params,
            num_slots=config.max_batch,
            prompt_overhead=overheads,
            max_seq_len=max_seq_len,
            window_s=config.window_s,
            max_new_tokens=config.max_new_tokens,
            mesh=serving_mesh(config.tensor_parallel),
        )

    return ModelEngine(
        make_runner,
        text_side,
        model_name=config.model_name,
        max_queue=config.max_queue,
        window_s=config.window_s,
        overlap_s=config.overlap_s,
        cut=config.cut,
        search_s=config.search_s,
        max_windows_per_request=config.max_windows_per_request,
        n_window=model_config.audio.n_window,
        default_max_new_tokens=config.max_new_tokens,
        budget=budget,
    )


def serving_mesh(tensor_parallel: int):
    """A mesh over this host's first ``tensor_parallel`` devices on the tensor axis (None for one device)."""
    if tensor_parallel <= 1:
        return None
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from trainer.model.sharding import MESH_AXES

    devices = jax.local_devices()
    if tensor_parallel > len(devices):
        raise ValueError(f"--tensor-parallel {tensor_parallel} but this host has {len(devices)} devices")
    shape = [1] * len(MESH_AXES)
    shape[MESH_AXES.index("tensor")] = tensor_parallel
    return Mesh(np.asarray(devices[:tensor_parallel]).reshape(shape), MESH_AXES)


def _resolve(checkpoint):
    """The model directory (an `epath.Path`, local or ``gs://``): the checkpoint itself, or the chosen step
    of a trainer run dir."""
    from trainer.model_checkpoint import resolve_checkpoint

    return resolve_checkpoint(checkpoint)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, marking the app draining on the first SIGTERM/SIGINT."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: object) -> None:
        if not self._app.state.draining:
            log.info("signal %s: draining (grace %.0f s)", sig, self.config.timeout_graceful_shutdown or 0)
        self._app.state.draining = True
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals after shutdown, which would turn a clean drain into
            # "killed by SIGTERM" (exit -15). A finished drain is a clean exit.
            self._captured_signals.clear()


def run_server(
    app: FastAPI,
    host: str,
    port: int,
    drain_grace_s: float,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serves ``app`` until SIGTERM/SIGINT, then drains for at most ``drain_grace_s`` seconds."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,  # uvicorn's access lines never include headers
        timeout_graceful_shutdown=max(1, round(drain_grace_s)),
    )
    DrainingServer(config, app).run()
