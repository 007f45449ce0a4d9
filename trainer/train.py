"""The training loop: set-up, resume, step, log, evaluate, checkpoint, preempt, summarise.

One linear function, `run`, in the order things happen. What it trains comes from a `Backend` (model
functions + data), so the loop is the same for the real Thinker and for the tests' stand-in.

Exit codes: 0 done; 42 preempted (SIGTERM) after saving a checkpoint, so a JobSet failure policy restarts
the job (docs/training.md); 3 too many consecutive non-finite steps; anything else is a crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from core import configlib
from core.fileio import atomic_write_json, atomic_write_text
from trainer import optim
from trainer.checkpoint import Checkpointer
from trainer.config import ExperimentConfig, MeshConfig
from trainer.metrics import RunLog, TrainMetrics
from trainer.train_step import ApplyFn, LossFn, init_state, make_train_step

EXIT_PREEMPTED = 42
EXIT_NONFINITE = 3
MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")


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


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with NaN/Inf loss or gradient."""


# ----------------------------------------------------------------------------------------------------
# Processes, mesh and shardings


def init_distributed(cfg: ExperimentConfig) -> None:
    """Joins the other processes: local launcher env (trainer/launch.py) or, on GKE, auto-detection."""
    kwargs = dict(
        heartbeat_timeout_seconds=cfg.distributed.heartbeat_timeout_seconds,
        initialization_timeout=cfg.distributed.initialization_timeout_seconds,
    )
    if "SAWT_COORDINATOR" in os.environ:
        jax.distributed.initialize(
            os.environ["SAWT_COORDINATOR"],
            num_processes=int(os.environ["SAWT_NUM_PROCESSES"]),
            process_id=int(os.environ["SAWT_PROCESS_ID"]),
            **kwargs,
        )
    elif os.environ.get("TPU_WORKER_HOSTNAMES") and "," in os.environ["TPU_WORKER_HOSTNAMES"]:
        jax.distributed.initialize(**kwargs)  # GKE JobSet: coordinator and ids come from the TPU env


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, ...]:
    """Axis sizes (data, fsdp, expert, tensor), filling the one -1 axis with the remaining devices."""
    sizes = [cfg.data, cfg.fsdp, cfg.expert, cfg.tensor]
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n_devices % known:
            raise configlib.ConfigError(
                f"mesh: {n_devices} devices do not divide by the fixed axes ({known})"
            )
        sizes[sizes.index(-1)] = n_devices // known
    if int(np.prod(sizes)) != n_devices:
        raise configlib.ConfigError(
            f"mesh: data*fsdp*expert*tensor = {int(np.prod(sizes))} but there are {n_devices} devices"
        )
    return tuple(sizes)


def build_mesh(cfg: MeshConfig, devices: list[Any] | None = None) -> Mesh:
    devices = devices if devices is not None else jax.devices()
    shape = mesh_shape(cfg, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def default_param_sharding(abstract_params: Any, mesh: Mesh) -> Any:
    """FSDP fallback: shard each array's largest dimension that divides by the fsdp axis; else replicate."""
    fsdp = mesh.shape["fsdp"]

    def spec(x: Any) -> NamedSharding:
        dims = [None] * len(x.shape)
        candidates = [i for i, d in enumerate(x.shape) if fsdp > 1 and d % fsdp == 0]
        if candidates:
            dims[max(candidates, key=lambda i: x.shape[i])] = "fsdp"
        return NamedSharding(mesh, P(*dims))

    return jax.tree.map(spec, abstract_params)


def state_shardings(abstract_state: dict[str, Any], param_shardings: Any, mesh: Mesh) -> dict[str, Any]:
    """Optimizer moments follow their parameter's sharding; scalars and counters are replicated."""
    replicated = NamedSharding(mesh, P())
    # optax nests param-shaped trees (mu, nu) inside its state; a leaf whose path ends with a parameter's
    # path and has its shape takes that parameter's sharding.
    flat_params = [
        (optim.path_str(path), sharding, leaf.shape)
        for (path, sharding), leaf in zip(
            jax.tree_util.tree_flatten_with_path(param_shardings)[0],
            jax.tree.leaves(abstract_state["params"]),
            strict=True,
        )
    ]

    def opt_leaf(path: Any, x: Any) -> NamedSharding:
        key = "/" + optim.path_str(path)
        for pkey, sharding, shape in flat_params:
            if key.endswith("/" + pkey) and tuple(x.shape) == tuple(shape):
                return sharding
        return replicated

    return {
        "params": param_shardings,
        "opt_state": jax.tree_util.tree_map_with_path(opt_leaf, abstract_state["opt_state"]),
        **{k: replicated for k in abstract_state if k not in ("params", "opt_state")},
    }


def batch_sharding(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, NamedSharding]:
    return {k: NamedSharding(mesh, P(BATCH_AXES, *([None] * (v.ndim - 1)))) for k, v in batch.items()}


def to_global(mesh: Mesh, local: dict[str, Any]) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays (the batch axis is sharded over data x fsdp x expert)."""
    arrays = {k: v for k, v in local.items() if k != "meta"}
    shardings = batch_sharding(mesh, arrays)
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in arrays.items()}


# ----------------------------------------------------------------------------------------------------
# Preemption


class Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary (all processes agree on which).

    If no step boundary comes within ``grace_seconds`` (a stuck input, a long evaluation), the process exits
    42 without a new checkpoint rather than wait for the SIGKILL: resume then starts from the previous
    complete checkpoint, which is safe because checkpoints commit atomically.
    """

    def __init__(self, grace_seconds: float = 25.0) -> None:
        self.requested_at: float | None = None
        self.grace_seconds = grace_seconds
        self.saving = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            print("SIGTERM: will save a checkpoint at the next step boundary and exit 42", flush=True)
            timer = threading.Timer(self.grace_seconds, self._expire)
            timer.daemon = True
            timer.start()

    def _expire(self) -> None:
        if not self.saving:
            print(
                f"SIGTERM: no step boundary within {self.grace_seconds:g} s; exiting {EXIT_PREEMPTED} without "
                "a new checkpoint (resume uses the last complete one)",
                file=sys.stderr,
                flush=True,
            )
            os._exit(EXIT_PREEMPTED)

    def agreed(self) -> bool:
        """True on every process once any process got SIGTERM (a tiny all-gather when multi-process)."""
        flag = np.int32(self.requested_at is not None)
        if jax.process_count() > 1:
            flag = np.max(multihost_utils.process_allgather(flag))
        return bool(flag)


# ----------------------------------------------------------------------------------------------------
# Helpers


def params_sha256(params: Any) -> str:
    """SHA-256 over all parameter bytes, leaves in sorted path order (dtype and shape included)."""
    digest = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(flat, key=lambda kv: optim.path_str(kv[0])):
        arr = np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        digest.update(optim.path_str(path).encode())
        digest.update(str(arr.dtype).encode() + str(arr.shape).encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def _gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able ``obj``, in process order (for per-process data-iterator states)."""
    if jax.process_count() == 1:
        return [obj]
    raw = json.dumps(obj).encode()
    size = int(np.max(multihost_utils.process_allgather(np.int32(len(raw)))))
    buf = np.zeros(size, np.uint8)
    buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(buf))
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in gathered]


def _memory_stats() -> dict[str, float | None]:
    stats = jax.local_devices()[0].memory_stats() or {}
    return {
        "memory_in_use_bytes": stats.get("bytes_in_use"),
        "memory_peak_bytes": stats.get("peak_bytes_in_use"),
    }


def _to_float(x: Any) -> Any:
    arr = np.asarray(x)
    return arr.tolist() if arr.ndim else float(arr)


def load_backend(cfg: ExperimentConfig, plugin: str | None) -> Backend:
    """The real Thinker + Grain loader backend, or ``plugin``'s ``backend(cfg)`` (tests' stand-in)."""
    module = importlib.import_module(plugin or "trainer.backend")
    return module.backend(cfg)


@dataclasses.dataclass
class Program:
    """The compiled-program view of a run: abstract sharded state, optimizer and the step function."""

    init_params: Callable[[int], Any]
    abstract_state: dict[str, Any]
    shardings: dict[str, Any]
    tx: Any
    step: Callable[[dict[str, Any], dict[str, jax.Array]], tuple[dict[str, Any], dict[str, jax.Array]]]

    def jitted_step(self) -> Any:
        """The step under jit: state donated, new state laid out like the old one."""
        return jax.jit(self.step, donate_argnums=0, out_shardings=(self.shardings, None))


def build_program(cfg: ExperimentConfig, backend: Backend, mesh: Mesh) -> Program:
    """Shapes, shardings, optimizer and train step for ``cfg`` on ``mesh``, without allocating anything.

    Shared by the training loop and `sawt plan` (which compiles the same step for a TPU topology).
    """
    param_dtype = jnp.dtype(cfg.train.precision.param_dtype or backend.dtypes[0])

    def init_params(seed: int) -> Any:
        params = backend.init_params(seed)
        return jax.tree.map(
            lambda x: x.astype(param_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
        )

    abstract_params = jax.eval_shape(init_params, cfg.seed)
    tx, schedule = optim.build_optimizer(cfg.optimizer, cfg.train.steps, abstract_params, cfg.train.freeze)
    abstract_state = jax.eval_shape(lambda p: init_state(p, tx, cfg.seed), abstract_params)
    param_shardings = (backend.param_sharding or default_param_sharding)(abstract_params, mesh)
    shardings = state_shardings(abstract_state, param_shardings, mesh)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )
    trainable = optim.trainable_mask(abstract_params, cfg.train.freeze)
    step = make_train_step(
        backend.apply,
        backend.loss,
        tx,
        schedule,
        cfg.train,
        trainable,
        wrap_remat=not backend.handles_remat,
        default_dtypes=backend.dtypes,
    )
    return Program(init_params, abstract_state, shardings, tx, step)


# ----------------------------------------------------------------------------------------------------
# The loop


def run(cfg: ExperimentConfig, run_dir: Path, backend: Backend) -> int:
    """Trains to ``cfg.train.steps``, resuming from the run's latest complete checkpoint.

    Args:
        cfg: the experiment config.
        run_dir: the run directory (config.yaml, model/, metrics.jsonl, checkpoints/, summary.json).
        backend: model functions and data.

    Returns:
        The process exit code (0, or EXIT_PREEMPTED after a SIGTERM save).
    """
    pi = jax.process_index()
    primary = pi == 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if primary:
        atomic_write_text(run_dir / "config.yaml", configlib.dump(cfg))
        if backend.write_run_files is not None:
            backend.write_run_files(run_dir)
    preemption = Preemption(cfg.checkpoint.sigterm_grace_seconds)
    preemption.install()

    metrics = TrainMetrics(pi)
    if cfg.metrics.port:
        port = cfg.metrics.port + (pi if "SAWT_COORDINATOR" in os.environ else 0)
        try:
            metrics.serve(port)
        except OSError as err:  # another process holds the port: say which setting to change
            raise configlib.ConfigError(
                f"metrics.port={cfg.metrics.port}: cannot serve /metrics on port {port} ({err.strerror}); "
                "set metrics.port to a free port, or metrics.port=0 to turn it off"
            ) from None
    log = RunLog(run_dir, enabled=primary)

    mesh = build_mesh(cfg.mesh)
    # The model constrains activations by logical axis names against the ambient mesh.
    with jax.set_mesh(mesh):
        return _train(cfg, run_dir, backend, mesh, metrics, log, preemption)


def _train(
    cfg: ExperimentConfig,
    run_dir: Path,
    backend: Backend,
    mesh: Mesh,
    metrics: TrainMetrics,
    log: RunLog,
    preemption: Preemption,
) -> int:
    pi, pc = jax.process_index(), jax.process_count()
    primary = pi == 0
    if cfg.train.global_batch_size % pc:
        raise configlib.ConfigError(
            f"train.global_batch_size={cfg.train.global_batch_size} does not split over {pc} processes"
        )
    rows = cfg.train.global_batch_size // pc
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
    if cfg.train.global_batch_size % batch_ways:
        raise configlib.ConfigError(
            f"train.global_batch_size={cfg.train.global_batch_size} does not split over the "
            f"{batch_ways} devices of the batch axes (mesh data x fsdp x expert)"
        )

    program = build_program(cfg, backend, mesh)
    abstract_state, shardings, tx = program.abstract_state, program.shardings, program.tx
    init_params = program.init_params

    ckpt_dir = cfg.checkpoint.dir or str(run_dir / "checkpoints")
    checkpointer = Checkpointer(ckpt_dir, cfg.checkpoint)
    data = backend.make_data("train", pi, pc, rows)
    latest = checkpointer.latest_step()
    resumed_loss: float | None = None
    if latest is not None:
        restored, meta = checkpointer.restore(latest, abstract_state)
        state = {
            **restored,
            "step": jax.device_put(jnp.int32(meta["step"]), shardings["step"]),
            "rng": jax.device_put(jnp.asarray(meta["rng"], jnp.uint32), shardings["rng"]),
            "nonfinite_in_a_row": jax.device_put(jnp.int32(meta["nonfinite_in_a_row"]), shardings["step"]),
            "nonfinite_total": jax.device_put(jnp.int32(meta["nonfinite_total"]), shardings["step"]),
        }
        data_states = meta["data_states"]
        if len(data_states) != pc:
            raise RuntimeError(
                f"checkpoint {latest} was written by {len(data_states)} processes, this run has {pc}; "
                "the data-iterator state cannot be split differently"
            )
        data.set_state(data_states[pi])
        resumed_loss = meta.get("loss")
        metrics.resumes.labels(metrics.process).inc()
        log.write({"event": "resume", "step": latest}, f"resumed from {checkpointer.step_dir(latest)}")
    else:
        state = jax.jit(lambda: init_state(init_params(cfg.seed), tx, cfg.seed), out_shardings=shardings)()
        if cfg.load_from:
            if backend.load_params is None:
                raise configlib.ConfigError("load_from: this model backend cannot load checkpoints")
            loaded = backend.load_params(cfg.load_from)
            params = jax.tree.map(
                lambda x, a: jax.make_array_from_callback(
                    a.shape, a.sharding, lambda idx, x=x: np.asarray(x, a.dtype)[idx]
                ),
                loaded,
                abstract_state["params"],
            )
            state = {
                **state,
                "params": params,
                "opt_state": jax.jit(tx.init, out_shardings=shardings["opt_state"])(params),
            }
            log.write(
                {"event": "load_from", "path": cfg.load_from}, f"loaded parameters from {cfg.load_from}"
            )

    step_fn = program.jitted_step()

    step = int(jax.device_get(state["step"]))
    peak_flops = _peak_flops(cfg) if backend.flops_per_step else None
    exit_code = 0
    last_saved = latest
    last_loss = resumed_loss

    def save(at: int, wer: float | None = None, wait: bool = False) -> None:
        nonlocal last_saved
        t0 = time.monotonic()
        meta = {
            "step": at,
            "rng": np.asarray(jax.device_get(state["rng"])).tolist(),
            "nonfinite_in_a_row": int(jax.device_get(state["nonfinite_in_a_row"])),
            "nonfinite_total": int(jax.device_get(state["nonfinite_total"])),
            "loss": last_loss,
            "data_states": _gather_json(data.get_state()),
            "config": json.loads(json.dumps(cfg.model_dump(mode="json"))),
            # Orbax keeps the metric only in memory; recorded here, `resolve_checkpoint` finds the best step.
            "wer": wer,
        }
        checkpointer.save(at, state, meta, backend.model_config, wer=wer)
        if wait:
            checkpointer.wait()
        seconds = time.monotonic() - t0
        metrics.record_checkpoint(at, seconds)
        last_saved = at
        log.write(
            {"event": "checkpoint", "step": at, "seconds": seconds}, f"checkpoint {at} ({seconds:.2f}s)"
        )

    def evaluate(at: int) -> float | None:
        if backend.generate is None:
            return None
        from trainer.evaluate import evaluate as run_eval

        result = run_eval(cfg.eval, backend, state["params"], mesh, pi, pc, rows)
        metrics.record_eval(result)
        overall = result["overall"]
        log.write(
            {"event": "eval", "step": at, **{k: v for k, v in result.items() if k != "examples"}},
            f"eval step {at}: WER {overall['wer']:.4f} CER {overall['cer']:.4f}"
            + (
                f" ({result['cut']} of {result['hypotheses']} hypotheses cut at their length budget)"
                if result.get("cut")
                else ""
            ),
        )
        if primary:
            for ex in result.get("examples", []):
                print(f"  REF: {ex['ref']}\n  HYP: {ex['hyp']}", flush=True)
        return overall["wer"]

    if cfg.eval.at_start and step == 0:
        evaluate(0)

    try:
        while step < cfg.train.steps:
            t0 = time.monotonic()
            local = next(data)
            t_data = time.monotonic()
            batch = to_global(mesh, local)
            state, out = step_fn(state, batch)
            out = jax.device_get(out)
            step += 1
            t1 = time.monotonic()
            dt = t1 - t0
            last_loss = float(out["loss"])
            rec = {
                "step": step,
                **{k: _to_float(v) for k, v in out.items()},
                "step_seconds": dt,
                "data_wait_seconds": t_data - t0,
                "tokens_per_second": float(out["tokens"]) / dt,
                "samples_per_second": cfg.train.global_batch_size / dt,
                **_memory_stats(),
            }
            if "meta" in local and "duration" in local["meta"]:
                rec["audio_seconds_per_second"] = float(np.sum(local["meta"]["duration"])) * pc / dt
            if peak_flops:
                shapes = {k: v.shape for k, v in batch.items()}
                rec["mfu"] = backend.flops_per_step(shapes) / dt / (peak_flops * jax.device_count())
            metrics.record_step(rec)
            if hasattr(data, "skipped"):
                metrics.record_bad_records(dict(data.skipped))
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                log.write(
                    rec,
                    f"step {step}: loss {rec['loss']:.4f} grad_norm {rec['grad_norm']:.3f} "
                    f"lr {rec['learning_rate']:.2e} {rec['tokens_per_second']:.0f} tok/s",
                )
            if not bool(out["finite"]):
                print(f"step {step}: non-finite loss or gradient; update skipped", flush=True)
                if int(out["nonfinite_in_a_row"]) >= cfg.train.max_nonfinite_steps:
                    raise NonFiniteError(
                        f"{int(out['nonfinite_in_a_row'])} consecutive steps had a NaN/Inf loss or gradient "
                        f"(train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); stopping at step {step}"
                    )
            wer = None
            if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.train.steps:
                wer = evaluate(step)
            if preemption.agreed():
                preemption.saving = True
                save(step, wer, wait=True)
                exit_code = EXIT_PREEMPTED
                break
            if step % cfg.checkpoint.every == 0 and step < cfg.train.steps:
                save(step, wer)
        else:
            wer = evaluate(step)
            if last_saved != step:
                save(step, wer, wait=True)
    except NonFiniteError as err:
        checkpointer.close()
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    checkpointer.close()

    digest = params_sha256(state["params"])
    if primary and exit_code == 0:
        atomic_write_json(
            run_dir / "summary.json",
            {"final_step": step, "final_loss": last_loss, "params_sha256": digest},
        )
    log.write({"event": "end", "step": step, "exit_code": exit_code, "params_sha256": digest})
    log.close()
    return exit_code


def _peak_flops(cfg: ExperimentConfig) -> float:
    from trainer.flops import device_peak_flops

    return device_peak_flops(jax.local_devices()[0], cfg.metrics.cpu_peak_flops)
