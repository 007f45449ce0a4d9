"""The experiment config: every section of a training or evaluation run, loaded from a preset.

Presets live in trainer/configs/*.yaml; `sawt train --config tiny train.steps=10` loads one and applies
dotted overrides (see core.configlib).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from core import configlib
from core.configlib import Frozen
from trainer.data.config import DataConfig, TokenizerConfig
from trainer.model.config import ModelConfig

PRESETS_DIR = Path(__file__).parent / "configs"


FreezeGroup = Literal["audio_encoder", "embeddings", "experts", "router"]


class PrecisionConfig(Frozen):
    param_dtype: Literal["float32", "bfloat16"] | None = Field(
        None,
        description="dtype of the master weights and of the optimizer state (bfloat16 halves both). "
        "None: the model section's param_dtype.",
    )
    compute_dtype: Literal["float32", "bfloat16"] | None = Field(
        None,
        description="dtype the forward and backward passes run in: floating params are cast to it inside "
        "the step; gradients are cast back to param_dtype before the optimizer. None: the model section's "
        "compute_dtype.",
    )


class TrainConfig(Frozen):
    steps: int = Field(100, ge=1, description="Total optimizer steps of the run (resume continues to it).")
    global_batch_size: int = Field(
        8, ge=1, description="Rows per optimizer step over all processes (split evenly between them)."
    )
    grad_accum: int = Field(
        1,
        ge=1,
        description="Micro-batches per step: the global batch is split into this many, gradients summed.",
    )
    aux_loss_coef: float = Field(
        0.001, ge=0, description="Coefficient of the MoE router auxiliary (load-balancing) loss."
    )
    ctc_loss_coef: float = Field(
        0.0,
        ge=0,
        description="Weight of an auxiliary CTC loss of the transcript on the audio encoder's outputs, read "
        "through lm_head with <|audio_pad|> as the blank (no new weights). It teaches the encoder the words "
        "from the first step, so the decoder starts reading the audio sooner. 0: off. One clip per row only "
        "(not with data.packing).",
    )
    freeze: list[FreezeGroup] = Field(
        default_factory=list,
        description="Parameter groups left untouched (no gradient, no optimizer state): audio_encoder, "
        "embeddings, experts, router.",
    )
    remat: Literal["none", "full", "dots", "dots_no_batch"] | None = Field(
        None,
        description="Activation rematerialisation policy per layer: none, full (recompute everything), dots "
        "(save matmul outputs), dots_no_batch (save matmuls without a batch dimension). None: the model "
        "section's remat_policy.",
    )
    precision: PrecisionConfig = Field(default_factory=PrecisionConfig, description="Mixed-precision policy.")
    max_nonfinite_steps: int = Field(
        5,
        ge=1,
        description="Stop with an error after this many consecutive steps with a NaN/Inf loss or gradient.",
    )
    log_every: int = Field(1, ge=1, description="Steps between stdout and metrics.jsonl records.")


class OptimizerConfig(Frozen):
    learning_rate: float = Field(3e-4, gt=0, description="Peak learning rate (reached after warmup).")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup from 0 to the peak learning rate.")
    decay: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Schedule after warmup, down to min_lr_ratio x peak at train.steps."
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    b1: float = Field(0.9, description="AdamW first-moment decay.")
    b2: float = Field(0.95, description="AdamW second-moment decay.")
    eps: float = Field(1e-8, description="AdamW epsilon.")
    weight_decay: float = Field(
        0.01, ge=0, description="Decoupled weight decay (not applied to norms or biases)."
    )
    clip_norm: float = Field(1.0, gt=0, description="Global gradient-norm clipping threshold.")


class MeshConfig(Frozen):
    data: int = Field(1, description="Pure data-parallel ways (-1: all devices not used by other axes).")
    fsdp: int = Field(-1, description="Fully sharded data-parallel ways (-1: all remaining devices).")
    expert: int = Field(1, description="Expert-parallel ways (MoE experts sharded over it).")
    tensor: int = Field(1, description="Tensor-parallel ways (heads / MLP hidden sharded over it).")

    @model_validator(mode="after")
    def _one_fill(self) -> MeshConfig:
        if [self.data, self.fsdp, self.expert, self.tensor].count(-1) > 1:
            raise ValueError("at most one mesh axis may be -1")
        return self


class CheckpointConfig(Frozen):
    dir: str | None = Field(
        None,
        description="Checkpoint root: a local path, a GCS FUSE path, or gs://bucket/path (recommended on "
        "GKE: Orbax commits with a marker file there). Default: RUN_DIR/checkpoints.",
    )
    every: int = Field(50, ge=1, description="Steps between checkpoints (one is always saved at the end).")
    keep_last: int = Field(2, ge=1, description="Most recent checkpoints to keep.")
    keep_best: int = Field(1, ge=0, description="Checkpoints with the lowest validation WER to keep as well.")
    async_save: bool = Field(True, description="Write checkpoints in the background while training goes on.")
    atomicity: Literal["auto", "rename", "commit_file"] = Field(
        "auto",
        description="How a step becomes visible: rename (write to a temporary dir, then rename; POSIX only) "
        "or commit_file (write in place, then a commit_success marker; needed for GCS FUSE on flat "
        "buckets). auto: commit_file for gs:// and FUSE mounts, rename otherwise.",
    )
    sigterm_grace_seconds: float = Field(
        25.0,
        gt=0,
        description="After SIGTERM, save at the next step boundary if one comes within this long; otherwise "
        "exit 42 without a new checkpoint. Keep it below the pod's terminationGracePeriodSeconds minus a save.",
    )


class EvalConfig(Frozen):
    every: int = Field(0, ge=0, description="Steps between evaluations (0: only at the end).")
    split: str = Field("validation", description="Data split to decode.")
    max_batches: int = Field(4, ge=1, description="Batches per process to decode per evaluation.")
    batch_size: int = Field(
        0,
        ge=0,
        description="Global rows per evaluation batch (0: train.global_batch_size). Each batch is one decode "
        "loop whose steps cost about the same for 4 rows as for 16 on CPU, so a larger batch decodes a split "
        "in fewer, hardly slower steps.",
    )
    max_new_tokens: int = Field(
        448,
        ge=1,
        description="Cap of the greedy decoding budget; the budget itself follows each bucket's audio length "
        "and the transcript rate measured on the training split (trainer/data/length.py). Hypotheses cut at "
        "it are counted in the eval record.",
    )
    log_examples: int = Field(3, ge=0, description="Reference/hypothesis pairs printed per evaluation.")
    at_start: bool = Field(False, description="Also evaluate before the first step (the 'WER before').")


class MetricsConfig(Frozen):
    port: int = Field(
        9400,
        ge=0,
        le=65535,
        description="Prometheus /metrics port (0: off). Local multi-process runs use port + process index.",
    )
    cpu_peak_flops: float = Field(
        0.0, ge=0, description="Peak FLOP/s per CPU device for MFU (0: measure a matmul at start-up)."
    )


class DistributedConfig(Frozen):
    heartbeat_timeout_seconds: int = Field(
        10, ge=1, description="A peer silent for this long is declared dead and every process exits non-zero."
    )
    initialization_timeout_seconds: int = Field(
        300, ge=1, description="How long to wait for all processes to join."
    )
    coordinator_port: int = Field(
        8482,
        ge=1,
        le=65535,
        description="Port of the jax.distributed coordinator on a GKE TPU slice (worker 0); 8482 as JAX's own "
        "GKE detection uses.",
    )


class WatchdogConfig(Frozen):
    enabled: bool = Field(
        True,
        description="Exit with the restartable code (42) when no step completes in time, so that the JobSet "
        "restarts a hung job from its last checkpoint (trainer/watchdog.py).",
    )
    multiple: float = Field(
        10.0, gt=1, description="A step may take this many times the median of recent step times, ..."
    )
    floor_seconds: float = Field(600.0, gt=0, description="... and at least this many seconds.")
    compile_seconds: float = Field(
        1800.0,
        gt=0,
        description="Allowance for start-up (restore included) to the first step, and for a step that compiles "
        "a batch shape not seen before.",
    )
    eval_seconds: float = Field(3600.0, gt=0, description="Allowance for one evaluation or a blocking save.")


class ExperimentConfig(Frozen):
    seed: int = Field(0, description="Seed for parameter init, data order and sampling.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Architecture of the thinker.")
    data: DataConfig = Field(default_factory=DataConfig, description="Input pipeline.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Tokenizer location.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training loop and loss.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="AdamW and its schedule.")
    mesh: MeshConfig = Field(default_factory=MeshConfig, description="Device mesh axes sizes.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Orbax checkpoints.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Greedy-decoding WER evaluation.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus and MFU.")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Multi-process start-up and failure detection."
    )
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig, description="Hang detection.")
    load_from: str | None = Field(
        None,
        description="Fine-tune this model checkpoint (converted HF dir, trainer run dir or step dir): its "
        "architecture (model_config.json) and tokenizer (the files beside it) replace the preset's model "
        "section and tokenizer.dir; its weights are the start when the run has no checkpoint of its own yet.",
    )

    @model_validator(mode="after")
    def _ctc_needs_one_clip_per_row(self) -> ExperimentConfig:
        if self.train.ctc_loss_coef > 0 and self.data.packing:
            raise ValueError(
                "train.ctc_loss_coef > 0 needs one clip per row, but data.packing packs several; "
                "set one of them off"
            )
        return self


# The parts of `model` that describe the architecture; with load_from they come from the checkpoint, while
# the numerics (dtypes, moe_impl, remat, unrolling) stay the recipe's.
ARCHITECTURE_FIELDS = ("name", "audio", "text", "tokens")


def load_experiment(
    source: str | Path | None, overrides: tuple[str, ...] | list[str] = ()
) -> ExperimentConfig:
    """Loads a preset name or YAML path, applies ``key=value`` overrides, then `load_from` (see
    `fine_tune_tree`)."""
    if source is None:
        return configlib.load(ExperimentConfig, None, overrides)
    tree = configlib.load_yaml_tree(source, PRESETS_DIR)
    keys = []
    for text in overrides:
        key, value = configlib.parse_override(text)
        configlib.set_dotted(tree, key, value)
        keys.append(key)
    if tree.get("load_from"):
        tree = fine_tune_tree(tree, keys)
    return configlib.build(ExperimentConfig, tree, f"{source} + overrides" if overrides else str(source))


def fine_tune_tree(tree: dict, explicit_keys: list[str]) -> dict:
    """The raw experiment ``tree`` with the architecture and tokenizer of its ``load_from`` checkpoint.

    ``load_from`` means fine-tuning that checkpoint: the preset supplies the recipe (optimizer, schedule,
    data, buckets, freezing, mesh, numerics), the checkpoint what must match its weights (`ARCHITECTURE_FIELDS`
    of its model_config.json, and the tokenizer it carries). A model field the user set explicitly
    (``explicit_keys``: the dotted keys of the command-line overrides) that disagrees with the checkpoint is
    an error naming it. ``tokenizer.dir`` set explicitly is kept.

    Raises:
        ConfigError: the checkpoint cannot be read, has no tokenizer, or an explicit model field conflicts.
    """
    from trainer.model_checkpoint import companion_dir, load_model_config, resolve_checkpoint

    where = f"load_from={tree['load_from']}"
    try:
        root = resolve_checkpoint(tree["load_from"])
    except FileNotFoundError as err:
        raise configlib.ConfigError(f"{where}: {err}") from None
    try:
        source = load_model_config(root).model_dump(mode="json")
    except ValueError:
        # Not a thinker's config (a test backend's stand-in model): nothing to adopt; the backend's own
        # load_params checks what it loads.
        return tree
    for key in explicit_keys:
        parts = key.split(".")
        if parts[0] != "model" or len(parts) < 2 or parts[1] not in ARCHITECTURE_FIELDS:
            continue
        mine, theirs = _dotted_get(tree, parts), _dotted_get(source, parts[1:])
        if mine != theirs:
            raise configlib.ConfigError(
                f"{key}={mine} conflicts with {where}, whose model has {key}={theirs}: the architecture "
                "comes from the checkpoint (drop the override, or fine-tune another checkpoint)"
            )
    tree = configlib.deep_merge(tree, {})
    model = tree.setdefault("model", {})
    for field in ARCHITECTURE_FIELDS:
        model[field] = source[field]
    if not any(k == "tokenizer" or k.startswith("tokenizer.") for k in explicit_keys):
        files = companion_dir(tree["load_from"], root)
        if files is None:
            raise configlib.ConfigError(
                f"{where}: no tokenizer files beside the checkpoint or in its run directory; set tokenizer.dir"
            )
        tree["tokenizer"] = {**tree.get("tokenizer", {}), "dir": str(files)}
    return tree


def _dotted_get(tree: object, parts: list[str]) -> object:
    for part in parts:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
