"""Renders the Kubernetes manifests of one workload from typed values: `render(values, workload) -> str`.

Pure: Jinja2 templates in k8s/templates (StrictUndefined) over `k8s.config.Values` and the TPU table;
no kubectl or gcloud. Templates hold the structure of each object; blocks that are data (labels, env,
volumes, security contexts, resources) are computed here and written with the `toyaml` filter, never
pasted together as strings. The rendered text is parsed and dumped again, so the output is always
well-formed YAML in one canonical layout (what the goldens compare).

Regenerate the goldens after a deliberate change: ``.venv/bin/python -m k8s.render --goldens``.
"""

from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from k8s import alerting, grafana
from k8s.config import PACKAGE_DIR, REPO_ROOT, FuseBucket, Values, load_values
from k8s.tpu_types import ACCELERATOR_LABEL, TOPOLOGY_LABEL, TPU_RESOURCE, TpuSlice

TEMPLATES_DIR = PACKAGE_DIR / "templates"
GOLDENS_DIR = REPO_ROOT / "tests" / "goldens" / "deploy"

WORKLOADS = ("train", "batch-infer", "data-convert", "ckpt-convert", "serve", "monitoring")
# The replicated job of the TPU JobSets; short, because it is part of every pod name.
REPLICATED_JOB = "slice"
CONFIG_MOUNT = "/etc/sawt"
MANAGED_BY = "sawt-deploy"
GCSFUSE_DRIVER = "gcsfuse.csi.storage.gke.io"
FILE_CACHE_SIZE_OPTION = "file-cache:max-size-mb:"
# Signals (128+N: SIGTERM 143, SIGKILL 137 on preemption or eviction) restart the JobSet like the trainer's
# own "saved after SIGTERM" exit code; every other non-zero exit is an application error and fails it.
SIGNAL_EXIT_CODES = tuple(range(128, 256))


class RenderError(ValueError):
    """The values cannot produce valid manifests (named workload, key or object)."""


class _Dumper(yaml.SafeDumper):
    """Block YAML, but multi-line strings as literal blocks and lists of numbers on one line."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    if "\n" in text and not any(line != line.rstrip() for line in text.split("\n")):
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", text)


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    numbers = bool(items) and all(isinstance(i, int) and not isinstance(i, bool) for i in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=numbers)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def to_yaml(data: Any) -> str:
    """One YAML document in the layout of every rendered manifest."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000
    )


def _toyaml(data: Any, indent: int = 0) -> str:
    """YAML for a data block, indented to sit under a key at column ``indent``; for use in templates."""
    text = to_yaml(data)
    if text.endswith("...\n"):  # a bare scalar
        text = text[: -len("...\n")]
    lines = text.rstrip("\n").split("\n")
    return ("\n" + " " * indent).join(lines)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["toyaml"] = _toyaml
    env.filters["merge"] = lambda base, extra: {**base, **extra}
    # Scalars go through YAML too, so that a value like "0" or "on" stays a string.
    env.filters["q"] = lambda value: _toyaml(value)
    return env


# ---------------------------------------------------------------------------------------------------------
# Data blocks shared by the templates


def labels(values: Values, component: str) -> dict[str, str]:
    """The app.kubernetes.io labels every object carries."""
    return {
        "app.kubernetes.io/name": "sawt",
        "app.kubernetes.io/instance": values.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "sawt",
        "app.kubernetes.io/version": values.version,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector(values: Values, component: str) -> dict[str, str]:
    """The stable subset of `labels` that selectors and monitors match on."""
    keys = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")
    full = labels(values, component)
    return {key: full[key] for key in keys}


def _env_list(*mappings: dict[str, str]) -> list[dict[str, Any]]:
    merged: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
    for mapping in mappings:
        merged.update(mapping)
    return [{"name": name, "value": str(value)} for name, value in merged.items()]


def _fuse_volume(name: str, bucket: FuseBucket, read_only: bool, host_network: bool) -> dict[str, Any]:
    options = bucket.read_mount_options if read_only else bucket.write_mount_options
    attributes = {"bucketName": bucket.bucket, "mountOptions": ",".join(options)}
    if host_network:
        # The sidecar cannot reach the metadata server's per-pod identity on the node network otherwise.
        attributes["hostNetworkPodKSA"] = "true"
    volume: dict[str, Any] = {"driver": GCSFUSE_DRIVER, "volumeAttributes": attributes}
    if read_only:
        volume["readOnly"] = True
    return {"name": name, "csi": volume}


class _Mounts:
    """Collects the volumes and mounts of one pod, and the annotations that GCS FUSE needs."""

    def __init__(self, values: Values, host_network: bool = False) -> None:
        self.values = values
        self.host_network = host_network
        self.volumes: list[dict[str, Any]] = []
        self.mounts: list[dict[str, Any]] = []
        self.fuse = False
        self.cached = False

    def bucket(self, name: str, bucket: FuseBucket, read_only: bool) -> None:
        self.volumes.append(_fuse_volume(name, bucket, read_only, self.host_network))
        self.mounts.append({"name": name, "mountPath": bucket.mount_path, "readOnly": read_only})
        self.fuse = True
        self.cached = self.cached or read_only

    def config_map(self, name: str, config_map: str) -> None:
        self.volumes.append({"name": name, "configMap": {"name": config_map}})
        self.mounts.append({"name": name, "mountPath": CONFIG_MOUNT, "readOnly": True})

    def shm(self) -> None:
        # JAX and Grain use /dev/shm; the container runtime's default is 64 MiB.
        self.volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        self.mounts.append({"name": "dshm", "mountPath": "/dev/shm"})

    def pod_annotations(self) -> dict[str, str]:
        if not self.fuse:
            return {}
        out = {"gke-gcsfuse/volumes": "true"}
        for key, value in self.values.storage.sidecar_limits.items():
            out[f"gke-gcsfuse/{key}"] = str(value)
        return out

    def all_volumes(self) -> list[dict[str, Any]]:
        volumes = copy.deepcopy(self.volumes)
        cache_mib = self.values.storage.file_cache_mib()
        if self.cached and cache_mib:
            # gcsfuse's "-1" means "as much as the cache directory holds", but a memory-backed emptyDir reports
            # the node's tmpfs size, not its sizeLimit: going past sizeLimit evicts the pod. So each read-only
            # mount gets its share of the volume, with 10% headroom.
            cached = [v for v in volumes if v.get("csi", {}).get("readOnly")]
            share = max(1, int(cache_mib * 0.9) // len(cached))
            for volume in cached:
                attributes = volume["csi"]["volumeAttributes"]
                options = [
                    f"{FILE_CACHE_SIZE_OPTION}{share}"
                    if option.startswith(FILE_CACHE_SIZE_OPTION)
                    else option
                    for option in attributes["mountOptions"].split(",")
                ]
                attributes["mountOptions"] = ",".join(options)
            # The FUSE sidecar keeps its file cache here; TPU VMs have no local SSD, so RAM it is.
            volumes.append(
                {
                    "name": "gke-gcsfuse-cache",
                    "emptyDir": {"medium": "Memory", "sizeLimit": self.values.storage.file_cache_size},
                }
            )
        return volumes


def _security(values: Values, tpu: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod securityContext, container securityContext) for a TPU or a CPU pod (see Security.tpu_profile).

    TPU pods follow Google's references: GKE's TPU samples run their (root) images with no security context,
    xpk runs TPU containers privileged. sawt's images default to uid 1000, so root is said explicitly.
    """
    sec = values.security
    if tpu and sec.tpu_profile in ("root", "privileged"):
        pod = {"runAsUser": 0, "runAsGroup": 0}
        return pod, ({"privileged": True} if sec.tpu_profile == "privileged" else {})
    pod = {
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsNonRoot": True,
        "runAsUser": sec.run_as_user,
        "runAsGroup": sec.run_as_group,
        "fsGroup": sec.fs_group,
    }
    return pod, {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _resources(resources: Any, tpu_chips: int = 0) -> dict[str, Any]:
    requests = dict(resources.requests)
    limits = dict(resources.limits)
    if tpu_chips:
        # An extended resource: requests must equal limits.
        requests[TPU_RESOURCE] = str(tpu_chips)
        limits[TPU_RESOURCE] = str(tpu_chips)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _tpu_scheduling(tpu_slice: TpuSlice) -> dict[str, Any]:
    return {
        "node_selector": {ACCELERATOR_LABEL: tpu_slice.accelerator, TOPOLOGY_LABEL: tpu_slice.topology},
        # TPU nodes carry google.com/tpu=present:NoSchedule.
        "tolerations": [{"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
    }


def _multislice_env(values: Values, jobset: str) -> dict[str, Any]:
    """MEGASCALE_* for multislice: JAX finds the DCN coordinator (slice 0, worker 0) from these."""
    subdomain = jobset  # the JobSet's headless service
    return {
        "MEGASCALE_COORDINATOR_ADDRESS": f"{jobset}-{REPLICATED_JOB}-0-0.{subdomain}",
        "MEGASCALE_NUM_SLICES": str(values.tpu.slices),
    }


# ---------------------------------------------------------------------------------------------------------
# Per-workload contexts


def _tpu_pod(values: Values, component: str, tpu_slice: TpuSlice, mounts: _Mounts, env: list, resources: Any):
    pod_sec, container_sec = _security(values, tpu=True)
    return {
        **_tpu_scheduling(tpu_slice),
        "labels": labels(values, component),
        "annotations": mounts.pod_annotations(),
        "pod_security": pod_sec,
        "container_security": container_sec,
        "volumes": mounts.all_volumes(),
        "volume_mounts": mounts.mounts,
        "env": env,
        "resources": _resources(resources, tpu_slice.chips_per_host),
    }


def _jobset_context(values: Values, component: str, jobset: str, mounts: _Mounts, env_extra: dict) -> dict:
    tpu_slice = values.tpu.slice
    # Training is one SPMD program over every slice; batch inference shards records over the hosts of one
    # slice (its processes are independent, so more slices would only need a global process index).
    slices = values.tpu.slices if component == "train" else 1
    env = dict(env_extra)
    if slices > 1:
        env.update(_multislice_env(values, jobset))
    if component == "batch-infer":
        env["SAWT_NUM_PROCESSES"] = str(tpu_slice.hosts)
    env_list = _env_list(env)
    if slices > 1:
        env_list.append(_field_env("MEGASCALE_SLICE_ID", "metadata.labels['jobset.sigs.k8s.io/job-index']"))
    if component == "batch-infer":
        # Process i of n takes records i, i+n, ...: i is the pod's completion index within the Job.
        env_list.append(
            _field_env("SAWT_PROCESS_ID", "metadata.annotations['batch.kubernetes.io/job-completion-index']")
        )
    resources = values.train.resources if component == "train" else values.batch_infer.resources
    return {
        "jobset": jobset,
        "replicated_job": REPLICATED_JOB,
        "slice": tpu_slice,
        "slices": slices,
        "pod": _tpu_pod(values, component, tpu_slice, mounts, env_list, resources),
        # Job validation wants onExitCodes values unique and ascending (k8s/admission.py job.pod_failure_policy).
        "restartable_exit_codes": sorted({values.train.restart_exit_code, *SIGNAL_EXIT_CODES}),
        # Only the trainer serves /metrics.
        "ports": [{"name": "metrics", "containerPort": values.metrics.port, "protocol": "TCP"}]
        if component == "train"
        else [],
    }


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _root(bucket: FuseBucket) -> str:
    return bucket.mount_path.rstrip("/")


def run_dir(values: Values, run_name: str | None = None) -> str:
    """A run directory on the runs mount (default: the train run's)."""
    return f"{_root(values.storage.runs)}/{run_name or values.train.run_name}"


def converted_model_dir(values: Values) -> str:
    """Where ckpt-convert writes the converted base model (what train's load_from reads)."""
    return f"{_root(values.storage.models)}/{values.ckpt_convert.dst}"


def _pipeline_overrides(values: Values) -> list[str]:
    """The train command's wiring into the pipeline: where it starts from, what it reads, where it saves."""
    train, storage = values.train, values.storage
    wiring = []
    if train.load_from == "converted":
        # The converted base carries its tokenizer (hf-to-orbax copies the release's files beside it).
        wiring += [f"load_from={converted_model_dir(values)}", f"tokenizer.dir={converted_model_dir(values)}"]
    elif train.load_from:
        wiring.append(f"load_from={train.load_from}")
    if train.data == "converted":
        wiring.append(f"data.dir={_root(storage.data)}/{values.data_convert.dst}")
    elif train.data:
        wiring.append(f"data.dir={_root(storage.data)}/{train.data}")
    # Checkpoints at gs:// (or the checkpoints mount); the run dir's config.yaml records it, which is how
    # batch-infer and serve find them from the run directory.
    wiring.append(f"checkpoint.dir={storage.checkpoints.checkpoint_dir(train.run_name)}")
    return wiring


def _served_checkpoint(values: Values, run: str | None, step: int | None, model: str | None, mounts) -> str:
    """The --checkpoint of batch-infer or serve, mounting what it needs (read-only)."""
    storage = values.storage
    if model:
        mounts.bucket("models", storage.models, read_only=True)
        return f"{_root(storage.models)}/{model}"
    mounts.bucket("runs", storage.runs, read_only=True)
    if storage.checkpoints.mode == "fuse":
        mounts.bucket("checkpoints", storage.checkpoints.bucket, read_only=True)
    path = run_dir(values, run)
    # A pinned step: resolve_checkpoint maps RUN/checkpoints/STEP to the run's recorded checkpoint.dir.
    return f"{path}/checkpoints/{step}" if step is not None else path


def _train_context(values: Values) -> dict[str, Any]:
    train = values.train
    jobset = f"{values.name}-{train.run_name}"
    mounts = _Mounts(values, values.network.host_network)
    mounts.config_map("config", f"{jobset}-config")
    mounts.bucket("data", values.storage.data, read_only=True)
    mounts.bucket("models", values.storage.models, read_only=True)
    mounts.bucket("runs", values.storage.runs, read_only=False)
    if values.storage.checkpoints.mode == "fuse":
        mounts.bucket("checkpoints", values.storage.checkpoints.bucket, read_only=False)
    mounts.shm()
    command = [
        "sawt",
        "train",
        "--config",
        f"{CONFIG_MOUNT}/config.yaml",
        # Logs, metrics, summary and the run's companion files on a mounted path; checkpoints at checkpoint.dir.
        "--run-dir",
        run_dir(values),
        *_pipeline_overrides(values),
        *train.overrides,
        # Last, so that the scrape port and the container port cannot disagree.
        f"metrics.port={values.metrics.port}",
    ]
    return {
        **_jobset_context(values, "train", jobset, mounts, train.env),
        "config_map": f"{jobset}-config",
        "config_yaml": yaml.safe_dump(train.config, sort_keys=False, allow_unicode=True),
        "command": command,
    }


def _tensor_parallel_args(key: str, override: int | None, args: list[str], tpu_slice: TpuSlice) -> list[str]:
    """``--tensor-parallel N`` for a serving process: ``override``, else every chip of its host.

    The bf16 thinker (~60 GB) does not fit one chip, so the default shards it over the whole host.
    """
    if "--tensor-parallel" in args or any(a.startswith("--tensor-parallel=") for a in args):
        raise RenderError(f"{key}.args: set {key}.tensor_parallel instead of passing --tensor-parallel")
    chips = override or tpu_slice.chips_per_host
    if chips > tpu_slice.chips_per_host:
        raise RenderError(
            f"{key}.tensor_parallel: {chips} exceeds the {tpu_slice.chips_per_host} chips per host of "
            f"{tpu_slice.name}"
        )
    return ["--tensor-parallel", str(chips)]


def _batch_infer_context(values: Values) -> dict[str, Any]:
    job = values.batch_infer
    jobset = f"{values.name}-{job.name}"
    storage = values.storage
    mounts = _Mounts(values, values.network.host_network)
    mounts.bucket("data", storage.data, read_only=True)
    checkpoint = _served_checkpoint(values, job.run, job.step, job.model, mounts)
    mounts.bucket("outputs", storage.outputs, read_only=False)
    mounts.shm()
    command = [
        "sawt",
        "batch-infer",
        "--checkpoint",
        checkpoint,
        "--data",
        f"{storage.data.mount_path.rstrip('/')}/{job.data}",
        "--out",
        f"{storage.outputs.mount_path.rstrip('/')}/{job.out}",
        *_tensor_parallel_args("batch_infer", job.tensor_parallel, job.args, values.tpu.slice),
        *job.args,
    ]
    return {**_jobset_context(values, "batch-infer", jobset, mounts, job.env), "command": command}


def _convert_context(values: Values, workload: str) -> dict[str, Any]:
    job = values.data_convert if workload == "data-convert" else values.ckpt_convert
    bucket = values.storage.data if workload == "data-convert" else values.storage.models
    mounts = _Mounts(values)
    mounts.bucket("work", bucket, read_only=False)
    root = bucket.mount_path.rstrip("/")
    if workload == "data-convert":
        command = ["sawt", "data", "convert", "--src", f"{root}/{job.src}", "--dst", f"{root}/{job.dst}"]
    else:
        command = [
            "sawt",
            "convert",
            "hf-to-orbax",
            "--hf",
            f"{root}/{job.src}",
            "--out",
            f"{root}/{job.dst}",
        ]
    if job.shards > 1:
        # The Job controller sets JOB_COMPLETION_INDEX in every pod of an Indexed Job.
        command += ["--shard-index", "$(JOB_COMPLETION_INDEX)", "--num-shards", str(job.shards)]
    pod_sec, container_sec = _security(values, tpu=False)
    return {
        "job": job,
        "job_name": f"{values.name}-{job.name}",
        "command": [*command, *job.args],
        "pod": {
            "labels": labels(values, workload),
            "annotations": mounts.pod_annotations(),
            "pod_security": pod_sec,
            "container_security": container_sec,
            "volumes": mounts.all_volumes(),
            "volume_mounts": mounts.mounts,
            "env": [
                *_env_list(),
                {
                    "name": "JOB_COMPLETION_INDEX",
                    "valueFrom": {
                        "fieldRef": {
                            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                        }
                    },
                },
            ],
            "resources": _resources(job.resources),
        },
    }


def _serve_context(values: Values) -> dict[str, Any]:
    serve = values.serve
    tpu_slice = serve.slice_of(values.tpu)
    name = f"{values.name}-{serve.name}"
    mounts = _Mounts(values)
    checkpoint = _served_checkpoint(values, serve.run, serve.step, serve.model, mounts)
    mounts.shm()
    command = [
        "sawt",
        "serve",
        "--checkpoint",
        checkpoint,
        "--host",
        "0.0.0.0",
        "--port",
        str(serve.port),
        *_tensor_parallel_args("serve", serve.tensor_parallel, serve.args, tpu_slice),
        *serve.args,
    ]
    if serve.hpa.enabled and tpu_slice.multi_host:
        raise RenderError(
            "serve.hpa.enabled: autoscaling is for the single-host Deployment, not a LeaderWorkerSet"
        )
    return {
        "name": name,
        "slice": tpu_slice,
        "command": command,
        "pod": _tpu_pod(values, "serve", tpu_slice, mounts, _env_list(serve.env), serve.resources),
        "probe_failures_at_startup": max(1, serve.startup_seconds // 10),
    }


def _monitoring_context(values: Values) -> dict[str, Any]:
    boards = {
        "training": grafana.training_dashboard(),
        "inference": grafana.inference_dashboard(),
    }
    return {
        "rules": alerting.alert_rules(values.monitoring.alerts),
        "dashboards": {key: grafana.dashboard_json(board) for key, board in boards.items()},
        "operator_labels": {**labels(values, "monitoring"), **values.monitoring.operator_labels},
        "server": f"{values.name}-{values.serve.name}",
    }


CONTEXTS = {
    "train": _train_context,
    "batch-infer": _batch_infer_context,
    "data-convert": lambda v: _convert_context(v, "data-convert"),
    "ckpt-convert": lambda v: _convert_context(v, "ckpt-convert"),
    "serve": _serve_context,
    "monitoring": _monitoring_context,
}


# ---------------------------------------------------------------------------------------------------------
# Rendering


class _UniqueKeyLoader(yaml.CSafeLoader):
    """Refuses a mapping with a repeated key, which plain YAML loading would silently collapse."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping
)


def render_text(values: Values, workload: str) -> str:
    """The raw template output (before normalisation); `render` is what users and goldens see."""
    if workload not in WORKLOADS:
        raise RenderError(f"unknown workload {workload!r}; workloads: {', '.join(WORKLOADS)}")
    template = _environment().get_template(f"{workload}.yaml.j2")
    context = {
        "v": values,
        "workload": workload,
        "labels": lambda component: labels(values, component),
        "selector": lambda component: selector(values, component),
        **CONTEXTS[workload](values),
    }
    try:
        return template.render(context)
    except jinja2.UndefinedError as err:
        raise RenderError(f"template {workload}.yaml.j2: {err}") from err


def render_objects(values: Values, workload: str) -> list[dict[str, Any]]:
    """The workload's objects as dicts, in apply order."""
    text = render_text(values, workload)
    try:
        docs = list(yaml.load_all(text, Loader=_UniqueKeyLoader))
    except yaml.YAMLError as err:  # a template bug, not user input; say where
        raise RenderError(f"template {workload}.yaml.j2 produced invalid YAML: {err}") from err
    return [doc for doc in docs if doc]


def dump_objects(objects: Iterable[dict[str, Any]]) -> str:
    """Multi-document YAML, one object per document (what `kubectl apply -f -` reads)."""
    parts = [to_yaml(obj) for obj in objects]
    return "---\n" + "---\n".join(parts) if parts else ""


def render(values: Values, workload: str) -> str:
    """Renders ``workload`` as multi-document YAML from validated ``values``.

    Args:
        values: typed values (see `k8s.config.load_values`).
        workload: one of WORKLOADS.

    Returns:
        YAML text, one document per Kubernetes object, in apply order.

    Raises:
        RenderError: unknown workload, or values that cannot make valid objects.
    """
    return dump_objects(render_objects(values, workload))


def object_file_name(index: int, obj: dict[str, Any]) -> str:
    kind = re.sub(r"(?<!^)(?=[A-Z])", "-", obj["kind"]).lower()
    return f"{index:02d}-{kind}-{obj['metadata']['name']}.yaml"


def write_objects(objects: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Writes one file per object into ``out_dir`` (created); returns the paths in apply order."""
    from core.fileio import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, obj in enumerate(objects):
        path = out_dir / object_file_name(index, obj)
        atomic_write_text(path, dump_objects([obj]))
        paths.append(path)
    return paths


def golden_path(workload: str) -> Path:
    return GOLDENS_DIR / f"{workload}.yaml"


def write_goldens() -> list[Path]:
    """Re-renders tests/goldens/deploy/<workload>.yaml from the default values."""
    from core.fileio import atomic_write_text

    values = load_values()
    GOLDENS_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for workload in WORKLOADS:
        atomic_write_text(golden_path(workload), render(values, workload))
        paths.append(golden_path(workload))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Regenerate the deploy goldens, the dashboards JSON and the alert rules file."
    )
    parser.add_argument("--goldens", action="store_true", help="rewrite tests/goldens/deploy/*.yaml")
    parser.add_argument("--dashboards", action="store_true", help="rewrite k8s/dashboards/*.json")
    parser.add_argument("--alerts", action="store_true", help="rewrite k8s/alerts/sawt-rules.yaml")
    args = parser.parse_args(argv)
    everything = not (args.goldens or args.dashboards or args.alerts)
    written: list[Path] = []
    if args.dashboards or everything:
        written += grafana.write_dashboards()
    if args.alerts or everything:
        written.append(alerting.write_rules_file())
    if args.goldens or everything:
        written += write_goldens()
    for path in written:
        print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
