"""Thin wrapper over Orbax's CheckpointManager: what a trainer checkpoint holds and how it commits.

A step directory ``DIR/<step>/`` holds the items
- ``params/``: the canonical parameter tree (docs/interfaces.md §4), so `trainer/model_checkpoint.py` and
  the server load a trainer checkpoint like a converted one;
- ``opt_state/``: the optimizer state (frozen parameters have none);
- ``train_meta/train_meta.json``: step, RNG, non-finite counters, the experiment config, and the
  data-iterator state of every process (gathered to process 0, which writes the file);
- ``model_config.json`` at the top of the step directory (our ModelConfig as JSON).

Atomicity (gke-tpu.md 1(b)): a step is visible to `latest_step` only once complete. On a POSIX path Orbax
writes into a temporary directory and renames it; for ``gs://`` (and for GCS FUSE mounts, whose directory
renames are not atomic on flat buckets) it writes in place and adds ``commit_success.txt`` last, and steps
without the marker are ignored. So a crash or kill -9 at any point, even mid-save, leaves nothing that
resume would pick up half-written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src.handlers.json_checkpoint_handler import JsonCheckpointHandler

from trainer.config import CheckpointConfig
from trainer.model_checkpoint import MODEL_CONFIG_FILE

META_ITEM = "train_meta"


class _StepDirJsonHandler(JsonCheckpointHandler):
    """Writes its JSON item at the top of the step directory instead of inside an item subdirectory.

    The model-checkpoint layout (docs/interfaces.md §6) wants ``<step>/model_config.json``; writing it from
    inside the save keeps it under Orbax's commit protocol (temporary dir or commit marker).
    """

    def __init__(self) -> None:
        super().__init__(filename=MODEL_CONFIG_FILE)

    async def _save_fn(self, x: Any, directory: epath.Path) -> None:
        await super()._save_fn(x, directory.parent)

    def restore(self, directory: epath.Path, item: Any = None, args: Any = None) -> Any:
        return super().restore(directory.parent, item, args)


@ocp.args.register_with_handler(_StepDirJsonHandler, for_save=True)
@dataclasses.dataclass
class ModelConfigSave(ocp.args.CheckpointArgs):
    """Save args of the step-level model_config.json item."""

    item: dict[str, Any]


@ocp.args.register_with_handler(_StepDirJsonHandler, for_restore=True)
@dataclasses.dataclass
class ModelConfigRestore(ocp.args.CheckpointArgs):
    """Restore args of the step-level model_config.json item."""

    item: dict[str, Any] | None = None


def _is_fuse_mount(path: Path) -> bool:
    """Whether ``path`` lives on a FUSE file system (e.g. a GCS FUSE CSI volume), per /proc/mounts."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    resolved = str(path.resolve())
    best, best_type = "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3 or len(fields[1]) <= len(best):
            continue
        if resolved == fields[1] or resolved.startswith(fields[1].rstrip("/") + "/"):
            best, best_type = fields[1], fields[2]
    return "fuse" in best_type


def atomicity_mode(directory: str, setting: str) -> ocp.options.AtomicityMode:
    """The commit protocol for ``directory`` (see CheckpointConfig.atomicity)."""
    if setting == "rename":
        return ocp.options.AtomicityMode.ATOMIC_RENAME
    if setting == "commit_file" or directory.startswith("gs://") or _is_fuse_mount(Path(directory)):
        return ocp.options.AtomicityMode.COMMIT_FILE
    return ocp.options.AtomicityMode.ATOMIC_RENAME


class _NoMissingMetricWarning(logging.Filter):
    """Drops Orbax's warning for a save without metrics: only evaluated steps have a WER, by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMissingMetricWarning())


class Checkpointer:
    """Saves and restores trainer state; keeps the last N and the best by validation WER."""

    def __init__(self, directory: str, cfg: CheckpointConfig):
        if not directory.startswith("gs://"):
            # Orbax's multi-process commit rejects relative paths ("Checkpoint path should be absolute").
            directory = str(Path(directory).resolve())
            Path(directory).mkdir(parents=True, exist_ok=True)
        self.directory = directory
        policies: list[Any] = [ocp.checkpoint_managers.preservation_policy.LatestN(n=cfg.keep_last)]
        if cfg.keep_best > 0:
            policies.append(
                # BestN keeps the *last* n after sorting, so lowest-WER-best needs a descending sort.
                ocp.checkpoint_managers.preservation_policy.BestN(
                    get_metric_fn=lambda m: m["wer"],
                    reverse=True,
                    n=cfg.keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn makes Orbax write each step's metrics (<step>/metrics/metrics) and read them back when
            # a restarted run reopens the directory; without it BestN sees no WER after a restart and the best
            # step is deleted by the next save. The preservation policy above decides what is kept.
            best_fn=(lambda m: m["wer"]) if cfg.keep_best > 0 else None,
            best_mode="min",
            enable_async_checkpointing=cfg.async_save,
            preservation_policy=ocp.checkpoint_managers.preservation_policy.AnyPreservationPolicy(policies),
            atomicity_options=ocp.options.AtomicityOptions(mode=atomicity_mode(directory, cfg.atomicity)),
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            directory,
            options=options,
            item_handlers={
                "params": ocp.StandardCheckpointHandler(),
                "opt_state": ocp.StandardCheckpointHandler(),
                META_ITEM: JsonCheckpointHandler(filename=f"{META_ITEM}.json"),
                "model_config": _StepDirJsonHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The newest complete step (incomplete or temporary step dirs are never listed)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(
        self,
        step: int,
        state: dict[str, Any],
        meta: dict[str, Any],
        model_config: dict[str, Any],
        wer: float | None = None,
    ) -> None:
        """Starts saving ``state`` at ``step`` (returns once device buffers are copied to host).

        Args:
            step: the step number (number of updates applied so far).
            state: the train state; ``params`` and ``opt_state`` are stored as Orbax PyTree items.
            meta: JSON-able metadata (step, RNG, data states, config).
            model_config: the ModelConfig as a JSON-able dict.
            wer: validation WER at this step, if evaluated (ranks the "best" checkpoints).
        """
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            opt_state=ocp.args.StandardSave(state["opt_state"]),
            **{META_ITEM: ocp.args.JsonSave(meta)},
            model_config=ModelConfigSave(model_config),
        )
        self._manager.save(step, args=args, metrics=None if wer is None else {"wer": float(wer)}, force=True)

    def restore(self, step: int, abstract_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restores ``(state without step/rng/counters, meta)``; arrays land on the abstract shardings."""
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state["params"]),
                opt_state=ocp.args.StandardRestore(abstract_state["opt_state"]),
                **{META_ITEM: ocp.args.JsonRestore()},
            ),
        )
        return {"params": out["params"], "opt_state": out["opt_state"]}, dict(out[META_ITEM])

    def wait(self) -> None:
        """Blocks until a background save has committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
