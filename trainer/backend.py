"""What the loop trains: the `Backend` interface, and the real backend behind it, the NNX Thinker
(trainer/model) and the Grain loader (trainer/data/loader.py).

The loop in trainer/train.py sees the model as pure functions over the canonical parameter tree (interfaces
§4), which is exactly ``nnx.to_pure_dict`` of the Thinker's params, so the train state, the
checkpoint's ``params`` item and a converted HF checkpoint are one and the same tree.

The train section's precision and remat settings, where set, override the model section's (the model applies
them per scanned layer); where unset, the model section's values hold.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from trainer.config import ExperimentConfig
from trainer.train_step import ApplyFn, LossFn


@dataclasses.dataclass
class Backend:
    """What the loop trains: model functions and data, behind a narrow interface.

    Attributes:
        init_params: seed -> canonical parameter tree (traceable: the loop runs it under jit).
        apply: (params, batch) -> model output.
        loss: (output, batch, aux_coef) -> (loss, metrics).
        model_config: the ModelConfig as JSON (written into each step directory).
        make_data: (split, process_index, process_count, rows_per_process) -> iterator of batch dicts with
            ``get_state() -> JSON-able`` and ``set_state(state)``.
        param_sharding: (abstract params, mesh) -> tree of NamedSharding; None uses `default_param_sharding`.
        generate: (params, global batch, max_new_tokens) -> int array [B, N] of generated ids, negative
            after the end of each row (greedy decoding), for evaluation.
        detokenize: list of ids -> text.
        load_params: path -> canonical parameter tree (numpy), for ``load_from=``.
        flops_per_step: batch shapes -> training FLOPs per global step (for MFU), or None.
        handles_remat: the model applies ``train.remat`` itself (per scanned layer); otherwise the step
            wraps the whole forward pass in ``jax.checkpoint``.
        dtypes: the model's (param, compute) dtypes, used where ``train.precision`` leaves them unset.
        write_run_files: run directory -> None; records what serving the run needs besides its weights (the
            companion files it trains with and the prompt), so the run directory describes itself.
        max_new_tokens_for: clip seconds -> generation budget for evaluation (trainer/data/length.py); None:
            ``eval.max_new_tokens`` for every clip.
    """

    init_params: Callable[[int], Any]
    apply: ApplyFn
    loss: LossFn
    model_config: dict[str, Any]
    make_data: Callable[[str, int, int, int], Iterator[dict[str, Any]]]
    param_sharding: Callable[[Any, Mesh], Any] | None = None
    generate: Callable[[Any, dict[str, Any], int], Any] | None = None
    detokenize: Callable[[list[int]], str] | None = None
    load_params: Callable[[str], Any] | None = None
    flops_per_step: Callable[[dict[str, tuple[int, ...]]], float] | None = None
    handles_remat: bool = False
    dtypes: tuple[str, str] = ("float32", "float32")
    write_run_files: Callable[[Path], None] | None = None
    max_new_tokens_for: Callable[[float], int] | None = None


def model_config_for(cfg: ExperimentConfig) -> Any:
    """The experiment's ModelConfig with the train section's dtypes and remat policy applied where set."""
    update = {
        "param_dtype": cfg.train.precision.param_dtype,
        "compute_dtype": cfg.train.precision.compute_dtype,
        "remat_policy": cfg.train.remat,
    }
    return cfg.model.model_copy(update={k: v for k, v in update.items() if v is not None})


def backend(cfg: ExperimentConfig) -> Backend:
    """Builds the Thinker backend for ``cfg`` (the tokenizer is loaded lazily, only for data and eval)."""
    from trainer.model import sharding
    from trainer.model.loss import thinker_loss
    from trainer.model.thinker import Thinker

    mcfg = model_config_for(cfg)
    abstract_model = nnx.eval_shape(lambda: Thinker(mcfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params, rest = nnx.split(abstract_model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise RuntimeError("the Thinker holds non-parameter state; the trainer does not carry it")

    def init_params(seed: int) -> Any:
        return nnx.to_pure_dict(nnx.state(Thinker(mcfg, rngs=nnx.Rngs(jax.random.key(seed))), nnx.Param))

    def merge(params: Any) -> Thinker:
        state = jax.tree.map(lambda x: x, abstract_params)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state, rest)

    def apply(params: Any, batch: dict[str, jax.Array]) -> Any:
        return merge(params)(batch)

    def param_sharding(abstract: Any, mesh: Any) -> Any:
        return sharding.param_shardings(abstract_params, mesh)

    tokenizer: dict[str, Any] = {}

    def tok() -> Any:
        if "tok" not in tokenizer:
            from trainer.data.text import check_model_ids, load_tokenizer

            tokenizer["tok"] = load_tokenizer(cfg.tokenizer.dir)
            check_model_ids(tokenizer["tok"], mcfg, f"tokenizer.dir={cfg.tokenizer.dir}")
        return tokenizer["tok"]

    def make_data(split: str, process_index: int, process_count: int, rows: int) -> Any:
        from trainer.data.loader import make_loader

        return make_loader(
            cfg.data, tok(), split, process_index, process_count, cfg.seed, rows, n_window=mcfg.audio.n_window
        )

    def generate(params: Any, batch: dict[str, jax.Array], max_new_tokens: int) -> jax.Array:
        from trainer.model import generate as gen

        model = merge(params)
        stops = (tok().im_end_id, tok().endoftext_id)
        # greedy_generate skips its host-side prompt checks by itself when the batch is a multi-host global
        # array (the in-graph guard still applies), so one call serves one process and many.
        ids, counts = gen.greedy_generate(model, batch, max_new_tokens, stop_ids=stops)
        return jnp.where(jnp.arange(ids.shape[1])[None, :] < counts[:, None], ids, -1)

    def detokenize(ids: list[int]) -> str:
        return tok().decode(ids)

    def load_params(path: str) -> Any:
        from trainer.model_checkpoint import load_model_checkpoint

        loaded_cfg, params = load_model_checkpoint(path)
        if loaded_cfg.text != mcfg.text or loaded_cfg.audio != mcfg.audio:
            raise ValueError(f"load_from={path}: its model_config.json does not match the experiment's model")
        return jax.tree.map(np.asarray, params)

    rate: dict[str, Any] = {}

    def transcript_rate() -> Any:
        # Deterministic (the first records of the train split), so every process computes the same budget.
        if "budget" not in rate:
            from trainer.data.length import LengthBudget, measure_split, reference_rate

            try:
                measured = measure_split(tok(), cfg.data.dir)
                rate["record"] = measured
                source = f"{measured['clips']} training transcripts"
                rate["budget"] = LengthBudget(measured["tokens_per_second"], source, cfg.eval.max_new_tokens)
            except (OSError, ValueError) as err:  # no train split here: the tokenizer's reference rate
                rate["record"] = None
                rate["budget"] = LengthBudget(
                    reference_rate(tok()), f"reference text ({err})", cfg.eval.max_new_tokens
                )
        return rate["budget"]

    def write_run_files(run_dir: Path) -> None:
        transcript_rate()
        write_model_files(cfg, tok(), run_dir, transcripts=rate["record"])

    def max_new_tokens_for(seconds: float) -> int:
        return transcript_rate().max_new_tokens(seconds)

    def flops_per_step(shapes: dict[str, tuple[int, ...]]) -> float:
        from trainer.flops import train_flops_per_step

        b, s = shapes["input_ids"]
        clips = shapes["audio_frames"][1] if len(shapes["audio_frames"]) == 2 else 1
        return train_flops_per_step(mcfg, b, s, shapes["audio_mel"][-1], cfg.train.freeze, clips)

    return Backend(
        init_params=init_params,
        apply=apply,
        loss=functools.partial(
            thinker_loss, ctc_coef=cfg.train.ctc_loss_coef, blank_id=mcfg.tokens.audio_token_id
        ),
        model_config=mcfg.model_dump(mode="json"),
        make_data=make_data,
        param_sharding=param_sharding,
        generate=generate,
        detokenize=detokenize,
        load_params=load_params,
        flops_per_step=flops_per_step,
        handles_remat=True,
        dtypes=(mcfg.param_dtype, mcfg.compute_dtype),
        write_run_files=write_run_files,
        max_new_tokens_for=max_new_tokens_for,
    )


def write_model_files(
    cfg: ExperimentConfig, tok: Any, run_dir: Path, transcripts: dict | None = None
) -> Path:
    """Records in ``RUN/model/`` what the run's checkpoints need besides their weights (interfaces §6).

    The companion files of the ``load_from`` checkpoint (HF config, generation and processor configs, the
    HF naming in hf_layout.json), then the tokenizer the run trains with over them, and ``prompt.json``:
    the instruction and its rendering; ``transcripts.json``, the transcript rate measured on the training
    split (the generation budget of whoever serves the run). Replaced as a whole, so it always describes the
    current start.
    """
    import shutil

    from core.fileio import atomic_write_json
    from trainer.data.text import TOKENIZER_FILES, prompt_record
    from trainer.model_checkpoint import (
        HF_LAYOUT_FILE,
        PROMPT_FILE,
        RUN_MODEL_DIR,
        companion_dir,
        copy_companion_files,
        resolve_checkpoint,
    )

    dest = run_dir / RUN_MODEL_DIR
    staging = run_dir / f".{RUN_MODEL_DIR}.writing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    source = None
    if cfg.load_from:
        source = companion_dir(cfg.load_from, resolve_checkpoint(cfg.load_from))
        if source is not None:
            copy_companion_files(source, staging)
            if (source / HF_LAYOUT_FILE).is_file():
                shutil.copy2(source / HF_LAYOUT_FILE, staging / HF_LAYOUT_FILE)
    tokenizer_dir = Path(cfg.tokenizer.dir)
    if source is None or tokenizer_dir.resolve() != source.resolve():
        for f in staging.iterdir():  # the tokenizer in use replaces the source's, file set and all
            if f.name in TOKENIZER_FILES:
                f.unlink()
        copy_companion_files(tokenizer_dir, staging)
    atomic_write_json(staging / PROMPT_FILE, prompt_record(tok, cfg.data.prompt_style()))
    if transcripts is not None:
        from trainer.data.length import TRANSCRIPTS_FILE

        atomic_write_json(staging / TRANSCRIPTS_FILE, transcripts)
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(staging, dest)
    return dest


def load_backend(cfg: ExperimentConfig, plugin: str | None) -> Backend:
    """The real Thinker + Grain loader backend, or ``plugin``'s ``backend(cfg)`` (tests' stand-in)."""
    if plugin:  # the hidden `sawt train --plugin MODULE`: a module named by the user, so loaded by name
        return importlib.import_module(plugin).backend(cfg)
    return backend(cfg)
