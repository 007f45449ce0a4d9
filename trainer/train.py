"""The training loop: set-up, resume, step, log, evaluate, checkpoint, preempt, summarise.

One linear function, `run`, in the order things happen. What it trains comes from a `Backend` (model
functions + data), so the loop is the same for the real Thinker and for the tests' stand-in.

Exit codes: 0 done; 42 preempted (SIGTERM) after saving a checkpoint, or hung (the watchdog found no step
completing in time; nothing saved), so a JobSet failure policy restarts the job (docs/training.md); 3 too
many consecutive non-finite steps; anything else is a crash.

Every record the loop writes to metrics.jsonl also feeds the run's goodput accounting (trainer/goodput.py),
replayed from the run's earlier attempts at start, and exported on /metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from core import configlib
from core.fileio import atomic_write_json, atomic_write_text
from trainer import optim
from trainer.backend import Backend
from trainer.checkpoint import Checkpointer
from trainer.config import ExperimentConfig
from trainer.distributed import (
    build_mesh,
    default_param_sharding,
    gather_json,
    params_sha256,
    state_shardings,
    to_global,
)
from trainer.evaluate import evaluate as run_eval
from trainer.goodput import CompileClock, GoodputTracker, StepSpans, process_start_time
from trainer.metrics import RunLog, TrainMetrics
from trainer.preemption import EXIT_PREEMPTED, Preemption
from trainer.train_step import init_state, make_train_step
from trainer.watchdog import Allowances, Watchdog

EXIT_NONFINITE = 3


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with NaN/Inf loss or gradient."""


def _memory_stats() -> dict[str, float | None]:
    stats = jax.local_devices()[0].memory_stats() or {}
    return {
        "memory_in_use_bytes": stats.get("bytes_in_use"),
        "memory_peak_bytes": stats.get("peak_bytes_in_use"),
    }


def _to_float(x: Any) -> Any:
    arr = np.asarray(x)
    return arr.tolist() if arr.ndim else float(arr)


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
    tracker = _goodput_tracker(run_dir) if primary else None

    def on_record(record: dict[str, Any]) -> None:
        assert tracker is not None
        tracker.add(record)
        metrics.record_goodput(tracker.report())

    log = RunLog(run_dir, enabled=primary, on_record=on_record if primary else None)
    log.write({"event": "start", "process_start": min(process_start_time(), time.time())})
    watchdog = _start_watchdog(cfg, log)

    mesh = build_mesh(cfg.mesh)
    # The model constrains activations by logical axis names against the ambient mesh.
    try:
        with jax.set_mesh(mesh):
            code = _train(cfg, run_dir, backend, mesh, metrics, log, preemption, watchdog)
    finally:
        if watchdog is not None:
            watchdog.stop()
    if primary and code == 0 and tracker is not None:
        summary = json.loads((run_dir / "summary.json").read_text())
        atomic_write_json(run_dir / "summary.json", {**summary, "goodput": tracker.report().as_dict()})
    return code


def _goodput_tracker(run_dir: Path) -> GoodputTracker:
    """The run's goodput so far: every record of its earlier attempts, replayed."""
    from core.fileio import read_jsonl

    tracker = GoodputTracker()
    if (run_dir / "metrics.jsonl").is_file():
        for record in read_jsonl(run_dir / "metrics.jsonl"):
            tracker.add(record)
    return tracker


def _start_watchdog(cfg: ExperimentConfig, log: RunLog) -> Watchdog | None:
    if not cfg.watchdog.enabled:
        return None
    w = cfg.watchdog
    allowances = Allowances(w.multiple, w.floor_seconds, w.compile_seconds, w.eval_seconds)
    return Watchdog(
        allowances, EXIT_PREEMPTED, on_hang=lambda hang: log.write({"event": "hang", **hang})
    ).start()


def _rows_per_process(key: str, global_rows: int, process_count: int, batch_ways: int) -> int:
    """Rows each process reads per batch; the global batch must split over the processes and the batch axes."""
    if global_rows % process_count:
        raise configlib.ConfigError(f"{key}={global_rows} does not split over {process_count} processes")
    if global_rows % batch_ways:
        raise configlib.ConfigError(
            f"{key}={global_rows} does not split over the {batch_ways} devices of the batch axes "
            "(mesh data x fsdp x expert)"
        )
    return global_rows // process_count


@functools.cache
def _compile_clock() -> CompileClock:
    """One listener on JAX's compile events per process (jax.monitoring's registry is process-wide)."""
    return CompileClock().install()


def _train(
    cfg: ExperimentConfig,
    run_dir: Path,
    backend: Backend,
    mesh: Mesh,
    metrics: TrainMetrics,
    log: RunLog,
    preemption: Preemption,
    watchdog: Watchdog | None,
) -> int:
    pi, pc = jax.process_index(), jax.process_count()
    compile_clock = _compile_clock()
    spans = StepSpans(compile_clock)
    primary = pi == 0
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
    rows = _rows_per_process("train.global_batch_size", cfg.train.global_batch_size, pc, batch_ways)
    eval_rows = _rows_per_process(
        "eval.batch_size", cfg.eval.batch_size or cfg.train.global_batch_size, pc, batch_ways
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
        t_restore = time.monotonic()
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
        log.write(
            {"event": "resume", "step": latest, "seconds": time.monotonic() - t_restore},
            f"resumed from {checkpointer.step_dir(latest)}",
        )
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
    pending: dict[str, Any] | None = None  # the last step record, while its span is not written yet
    seen_shapes: set[Any] = set()

    def write_step(rec: dict[str, Any], line: str | None = None) -> None:
        nonlocal pending
        log.write({**rec, **spans.take()}, line)
        pending = None

    def flush_steps() -> None:
        """Writes the steps not yet recorded, before a record of another phase (goodput reads them in order)."""
        if pending is not None:
            write_step(pending)

    def save(at: int, wer: float | None = None, wait: bool = False) -> None:
        nonlocal last_saved
        flush_steps()
        if watchdog is not None:
            watchdog.begin("checkpoint", at)
        t0 = time.monotonic()
        meta = {
            "step": at,
            "rng": np.asarray(jax.device_get(state["rng"])).tolist(),
            "nonfinite_in_a_row": int(jax.device_get(state["nonfinite_in_a_row"])),
            "nonfinite_total": int(jax.device_get(state["nonfinite_total"])),
            "loss": last_loss,
            "data_states": gather_json(data.get_state()),
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
        flush_steps()
        if watchdog is not None:
            watchdog.begin("eval", at)
        t0 = time.monotonic()
        compile_clock.take()
        result = run_eval(cfg.eval, backend, state["params"], mesh, pi, pc, eval_rows)
        timing = {"seconds": time.monotonic() - t0, "compile_seconds": compile_clock.take()}
        metrics.record_eval(result)
        overall = result["overall"]
        log.write(
            {"event": "eval", "step": at, **timing, **{k: v for k, v in result.items() if k != "examples"}},
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

    log.write({"event": "loop_start", "step": step, "compile_seconds": compile_clock.take()})
    if cfg.eval.at_start and step == 0:
        evaluate(0)

    try:
        while step < cfg.train.steps:
            t0 = time.monotonic()
            if watchdog is not None:
                watchdog.begin("step", step + 1)
            local = next(data)
            t_data = time.monotonic()
            # A batch shape not seen before compiles: the watchdog allows for it, from here.
            shape = tuple(sorted((k, v.shape) for k, v in local.items() if k != "meta"))
            compiles = shape not in seen_shapes
            seen_shapes.add(shape)
            if watchdog is not None and compiles:
                watchdog.begin("step", step + 1, compiles=True)
            batch = to_global(mesh, local)
            state, out = step_fn(state, batch)
            out = jax.device_get(out)
            step += 1
            t1 = time.monotonic()
            dt = t1 - t0
            if watchdog is not None:
                watchdog.step_done(dt, compiled=compiles)
            last_loss = float(out["loss"])
            rec = {
                "step": step,
                **{k: _to_float(v) for k, v in out.items()},
                "step_seconds": dt,
                "data_wait_seconds": t_data - t0,
                "compile_seconds": spans.add(dt, t_data - t0),
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
            pending = rec
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                write_step(
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
        flush_steps()
        checkpointer.close()
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    flush_steps()
    checkpointer.close()
    if watchdog is not None:
        watchdog.stop()  # hashing a large model's parameters is no step

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
