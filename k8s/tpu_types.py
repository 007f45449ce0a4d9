"""The GKE TPU table: node labels, machine types and, per topology, chips, hosts and chips per host.

One place for these facts, so that the manifests, the lint and `sawt deploy` agree. Sources (see
/work/shared/docs/gke-tpu.md §1(a)): xpk `system_characteristics.py` (labels, machine types, topologies;
chips per VM = 4 unless the slice has a single chip) and the GKE TPU samples (single-host 2x4 slices of v5e
and v6e with 8 chips in one VM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
TPU_RESOURCE = "google.com/tpu"


class TopologyError(ValueError):
    """A TPU type or topology that the table does not hold; the message lists the valid ones."""


@dataclass(frozen=True)
class TpuSlice:
    """One slice shape of one TPU generation: what a node pool of that shape offers."""

    type: str
    topology: str
    accelerator: str
    machine_type: str
    chips: int
    hosts: int
    chips_per_host: int
    tensorcores_per_chip: int

    @property
    def name(self) -> str:
        """The Cloud TPU name of the slice, e.g. ``v4-32`` (v4/v5p count TensorCores), ``v5litepod-16``."""
        prefix = {"v4": "v4", "v5e": "v5litepod", "v5p": "v5p", "v6e": "v6e"}[self.type]
        return f"{prefix}-{self.chips * self.tensorcores_per_chip}"

    @property
    def multi_host(self) -> bool:
        return self.hosts > 1


@dataclass(frozen=True)
class TpuType:
    """One TPU generation: its node label, TensorCores per chip and the topologies GKE offers."""

    name: str
    accelerator: str
    tensorcores_per_chip: int
    dims: int
    # topology -> machine type; chips per host follow from the machine type's "-Nt" suffix.
    topologies: dict[str, str]

    def slice(self, topology: str) -> TpuSlice:
        """The slice of this type with ``topology`` (e.g. ``2x2x4``); TopologyError if GKE has none."""
        machine_type = self.topologies.get(topology)
        if machine_type is None:
            known = ", ".join(self.topologies)
            raise TopologyError(
                f"TPU {self.name} has no topology {topology!r} in the table; known topologies: {known}"
            )
        chips = math.prod(int(d) for d in topology.split("x"))
        chips_per_host = int(machine_type.rsplit("-", 1)[1].rstrip("t"))
        return TpuSlice(
            type=self.name,
            topology=topology,
            accelerator=self.accelerator,
            machine_type=machine_type,
            chips=chips,
            hosts=chips // chips_per_host,
            chips_per_host=chips_per_host,
            tensorcores_per_chip=self.tensorcores_per_chip,
        )


def _cube_topologies(machine_type: str) -> dict[str, str]:
    # 3D generations (v4, v5p): 4 chips per host; 2x2x1 is a single host.
    shapes = ["2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16", "8x16x16"]
    return dict.fromkeys(shapes, machine_type)


def _lite_topologies(prefix: str, suffix_sep: str) -> dict[str, str]:
    # 2D generations (v5e, v6e): 1x1 on a 1-chip VM, 2x2 and 2x4 on one 4- or 8-chip VM, larger shapes on
    # 4-chip VMs. xpk maps 2x4 to two 4-chip VMs; we use the single-host 8-chip VM, which serving wants.
    table = {
        "1x1": f"{prefix}{suffix_sep}1t",
        "2x2": f"{prefix}{suffix_sep}4t",
        "2x4": f"{prefix}{suffix_sep}8t",
    }
    for shape in ("4x4", "4x8", "8x8", "8x16", "16x16"):
        table[shape] = f"{prefix}{suffix_sep}4t"
    return table


TPU_TYPES: dict[str, TpuType] = {
    "v4": TpuType("v4", "tpu-v4-podslice", 2, 3, _cube_topologies("ct4p-hightpu-4t")),
    "v5e": TpuType("v5e", "tpu-v5-lite-podslice", 1, 2, _lite_topologies("ct5lp-hightpu", "-")),
    "v5p": TpuType("v5p", "tpu-v5p-slice", 2, 3, _cube_topologies("ct5p-hightpu-4t")),
    "v6e": TpuType("v6e", "tpu-v6e-slice", 1, 2, _lite_topologies("ct6e-standard", "-")),
}

# Ports the TPU runtime, megascale and JAX bind on the host (they collide under hostNetwork): slice builder
# and megascale 8471/8080, libtpu runtime metrics 8431-8434, TPU process port 8476, JAX coordinator 8482.
TPU_RESERVED_PORTS = frozenset({8471, 8080, 8431, 8432, 8433, 8434, 8476, 8482})


def tpu_slice(type_name: str, topology: str) -> TpuSlice:
    """Looks up a slice by generation and topology, with an error that lists what exists."""
    tpu = TPU_TYPES.get(type_name)
    if tpu is None:
        raise TopologyError(f"unknown TPU type {type_name!r}; known types: {', '.join(TPU_TYPES)}")
    return tpu.slice(topology)


def slice_for_labels(accelerator: str, topology: str) -> TpuSlice:
    """The slice a pod asks for through its node selector labels (for the lint)."""
    for tpu in TPU_TYPES.values():
        if tpu.accelerator == accelerator:
            return tpu.slice(topology)
    raise TopologyError(f"unknown TPU accelerator label {accelerator!r}")
