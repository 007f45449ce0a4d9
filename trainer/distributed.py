"""Processes, the device mesh and shardings: how one training program spans hosts and chips.

`init_distributed` joins the processes (the local launcher's env, or GKE's TPU env); `build_mesh` lays the
devices out on the mesh axes of `trainer.model.sharding.MESH_AXES` (data, fsdp, expert, tensor); the
sharding helpers place parameters, optimizer state and batches on it; the gathers move small host-side
values (iterator states, a parameter digest) between processes. Shared by the loop, evaluation and
`sawt plan`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from core.errors import ConfigError
from trainer import optim, tpu_env
from trainer.config import ExperimentConfig, MeshConfig
from trainer.model.sharding import MESH_AXES

# The batch dimension is split over every axis but tensor (the model's logical "batch" axis).
BATCH_AXES = ("data", "fsdp", "expert")


def init_distributed(cfg: ExperimentConfig) -> None:
    """Joins the other processes: local launcher env (trainer/launch.py) or, on GKE, the TPU webhook's env."""
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
    elif tpu_env.multi_host_tpu_env(os.environ):
        # GKE JobSet: coordinator and ids from the TPU webhook's environment, as JAX's detection reads it.
        args = tpu_env.distributed_args(os.environ, cfg.distributed.coordinator_port)
        tpu_env.wait_for_name(args.coordinator_address, cfg.distributed.initialization_timeout_seconds)
        jax.distributed.initialize(
            args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id, **kwargs
        )


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, ...]:
    """Axis sizes (data, fsdp, expert, tensor), filling the one -1 axis with the remaining devices."""
    sizes = [cfg.data, cfg.fsdp, cfg.expert, cfg.tensor]
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n_devices % known:
            raise ConfigError(f"mesh: {n_devices} devices do not divide by the fixed axes ({known})")
        sizes[sizes.index(-1)] = n_devices // known
    if int(np.prod(sizes)) != n_devices:
        raise ConfigError(
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


def gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able ``obj``, in process order (for per-process data-iterator states)."""
    if jax.process_count() == 1:
        return [obj]
    raw = json.dumps(obj).encode()
    size = int(np.max(multihost_utils.process_allgather(np.int32(len(raw)))))
    buf = np.zeros(size, np.uint8)
    buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(buf))
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in gathered]


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
