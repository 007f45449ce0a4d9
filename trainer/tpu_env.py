"""Where a multi-host program finds its peers on a GKE TPU slice: the environment GKE's TPU webhook injects.

GKE injects ``TPU_WORKER_ID`` (0 .. hosts-1) and ``TPU_WORKER_HOSTNAMES`` (every host of the slice, ordered
by worker id) into the pods of an Indexed Job with a subdomain that requests ``google.com/tpu``; a multislice
JobSet adds ``MEGASCALE_COORDINATOR_ADDRESS``, ``MEGASCALE_NUM_SLICES`` and ``MEGASCALE_SLICE_ID`` (sawt's
manifests set those). `distributed_args` turns that environment into ``jax.distributed.initialize``'s
arguments by the rules of JAX's own GKE detection (jax `_src/clusters/cloud_tpu_cluster.py`
`BaseTpuCluster`/`GkeTpuCluster`): the coordinator is slice 0's first worker (or the Megascale coordinator),
process id = worker id + slice id x hosts per slice. Doing it explicitly keeps one code path for a real
slice and for the local stand-in of the rendered pods (tests/deploy/pipeline), where JAX's detection, which
also requires a Cloud TPU VM, does not apply; the coordinator port (JAX's 8482 by default) is
``distributed.coordinator_port``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

# jax _src/clusters/cloud_tpu_cluster.py: coordinator_port = '8482'.
JAX_TPU_COORDINATOR_PORT = 8482


@dataclass(frozen=True)
class DistributedArgs:
    coordinator_address: str
    num_processes: int
    process_id: int


def multi_host_tpu_env(env: Mapping[str, str]) -> bool:
    """Whether ``env`` is a multi-host TPU slice's (more than one worker hostname)."""
    hostnames = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    return "," in hostnames or int(env.get("MEGASCALE_NUM_SLICES", "1") or 1) > 1


def distributed_args(env: Mapping[str, str], port: int = JAX_TPU_COORDINATOR_PORT) -> DistributedArgs:
    """``jax.distributed.initialize`` arguments from GKE's TPU environment (see the module docstring)."""
    # JAX reads TPU_PROCESS_ADDRESSES first, then TPU_WORKER_HOSTNAMES.
    workers = (env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or "").split(",")
    workers = [w.strip() for w in workers if w.strip()]
    if not workers or "TPU_WORKER_ID" not in env:
        raise ValueError("TPU_WORKER_HOSTNAMES and TPU_WORKER_ID are not set: not a GKE TPU pod")
    slices = int(env.get("MEGASCALE_NUM_SLICES") or 1)
    slice_id = int(env.get("MEGASCALE_SLICE_ID") or 0)
    coordinator = env.get("MEGASCALE_COORDINATOR_ADDRESS") or workers[0]
    host = coordinator.split(":")[0]
    return DistributedArgs(
        coordinator_address=f"{host}:{port}",
        num_processes=len(workers) * slices,
        process_id=int(env["TPU_WORKER_ID"]) + slice_id * len(workers),
    )


def wait_for_name(address: str, timeout_seconds: float) -> None:
    """Waits until the coordinator's host name resolves (a headless Service's records appear with its pods),
    as JAX's own detection does before it connects."""
    host = address.rsplit(":", 1)[0]
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except socket.gaierror:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"coordinator host {host} did not resolve within {timeout_seconds:g}s"
                ) from None
            time.sleep(2.0)
