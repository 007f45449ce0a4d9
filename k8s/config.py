"""Typed values for the Kubernetes templates in k8s/templates: validated before anything renders.

Values come from a YAML file (k8s/values/v4-32.yaml by default) plus dotted ``--set key=value`` overrides,
through `core.configlib`, so an unknown or mistyped key fails with its dotted name. Keys are snake_case like
every other sawt config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from core import configlib
from core.configlib import Frozen
from k8s import tpu_types

# The package folder holds the data beside the code (templates/, values/, dashboards/, alerts/), so an installed
# wheel finds it as a clone does; the repository root matters only to dev tasks (goldens, the shared schemas).
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
VALUES_DIR = PACKAGE_DIR / "values"
DEFAULT_VALUES = VALUES_DIR / "v4-32.yaml"

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")
# Env names that would hide secrets in plain manifests; secrets belong in Secret objects or Secret Manager.
SECRET_NAME_HINT = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)

# Read-mostly training data: cache metadata and file contents for the life of the mount (MaxText's
# gcsfuse flags and the GKE JAX TPU sample; gke-tpu.md §1(b)).
READ_CACHE_MOUNT_OPTIONS = [
    "implicit-dirs",
    "metadata-cache:ttl-secs:-1",
    "metadata-cache:stat-cache-max-size-mb:-1",
    "metadata-cache:type-cache-max-size-mb:-1",
    "file-cache:max-size-mb:-1",
    "file-cache:cache-file-for-range-read:true",
    "file-cache:enable-parallel-downloads:true",
]
# Writes (converted data, checkpoints on an HNS bucket): gcsfuse's aiml-checkpointing profile.
WRITE_MOUNT_OPTIONS = [
    "implicit-dirs",
    "metadata-cache:ttl-secs:-1",
    "metadata-cache:negative-ttl-secs:0",
    "file-system:rename-dir-limit:200000",
]


_QUANTITY_SCALE = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def quantity_value(quantity: str) -> float:
    """The number a Kubernetes quantity (as QUANTITY accepts it) stands for, e.g. ``64Gi`` -> 68719476736."""
    match = re.match(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$", str(quantity))
    if not match or match.group(2) not in _QUANTITY_SCALE:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    return float(match.group(1)) * _QUANTITY_SCALE[match.group(2)]


def _check_quantities(resources: dict[str, str]) -> dict[str, str]:
    for key, value in resources.items():
        if not QUANTITY.match(str(value)):
            raise ValueError(f"{key}: {value!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    return resources


class Resources(Frozen):
    requests: dict[str, str] = Field(
        default_factory=dict, description="Container resource requests besides TPUs (cpu, memory...)."
    )
    limits: dict[str, str] = Field(
        default_factory=dict, description="Container resource limits besides TPUs (cpu, memory...)."
    )

    _check = field_validator("requests", "limits")(_check_quantities)


class TpuValues(Frozen):
    type: Literal["v4", "v5e", "v5p", "v6e"] = Field("v4", description="TPU generation.")
    topology: str = Field("2x2x4", description="Slice topology, AxB or AxBxC; must be in k8s/tpu_types.py.")
    slices: int = Field(
        1,
        ge=1,
        description="Slices of the train JobSet (its replicas; >1 runs multislice over DCN). batch-infer "
        "always uses one slice and shards records over its hosts.",
    )

    @model_validator(mode="after")
    def _known_topology(self) -> TpuValues:
        try:
            tpu_types.tpu_slice(self.type, self.topology)
        except tpu_types.TopologyError as err:
            raise ValueError(str(err)) from None
        return self

    @property
    def slice(self) -> tpu_types.TpuSlice:
        return tpu_types.tpu_slice(self.type, self.topology)


class Images(Frozen):
    trainer: str = Field(
        "sawt-trainer",
        description="Trainer image, with its registry (REGION-docker.pkg.dev/PROJECT/REPO/sawt-trainer:TAG). "
        "A bare name is pulled from Docker Hub, so `sawt deploy apply` and `--validate` refuse it unless told "
        "--allow-unqualified-images; skaffold renders bare artifact names and rewrites them itself.",
    )
    server: str = Field("sawt-server", description="Server image, with its registry (see images.trainer).")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="imagePullPolicy of every container."
    )


class ServiceAccount(Frozen):
    name: str = Field("sawt", description="Kubernetes service account the pods run as.")
    create: bool = Field(True, description="Render the ServiceAccount object (else it must exist).")
    gcp_service_account: str = Field(
        "",
        description="Google service account for Workload Identity (iam.gke.io/gcp-service-account "
        "annotation); empty when the KSA is granted bucket access directly.",
    )


class Priority(Frozen):
    class_name: str = Field("sawt-training", description="priorityClassName of the TPU workloads.")
    create: bool = Field(True, description="Render the PriorityClass (cluster-scoped) with `value`.")
    value: int = Field(500, description="Priority value when the class is created (xpk: medium = 500).")


class Security(Frozen):
    tpu_profile: Literal["root", "privileged", "non-root"] = Field(
        "root",
        description="Security context of TPU containers. root (default): run as uid 0 with no further "
        "restrictions, as every TPU manifest of GKE's samples does (their images run as root; sawt's images "
        "default to uid 1000, so the pod says runAsUser: 0). privileged: xpk's choice (privileged: true, so "
        "root), needed on GKE older than 1.28. non-root: the restricted profile of the CPU pods (uid "
        "run_as_user, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp); UNVERIFIED "
        "on TPU devices: no Google reference runs libtpu as non-root, and whether /dev/accel* or /dev/vfio "
        "open for that user depends on the node's container runtime (check jax.device_count() on a slice "
        "first). CPU-only pods always run non-root.",
    )
    run_as_user: int = Field(1000, ge=1, description="UID of non-root containers (the images' sawt user).")
    run_as_group: int = Field(1000, ge=1, description="GID of non-root containers.")
    fs_group: int = Field(1000, ge=1, description="fsGroup, so GCS FUSE files are readable by the group.")


class FuseBucket(Frozen):
    bucket: str = Field(..., description="GCS bucket mounted with the GCS FUSE CSI driver.")
    mount_path: str = Field(..., description="Where the bucket appears in the container.")
    read_mount_options: list[str] = Field(
        default_factory=lambda: list(READ_CACHE_MOUNT_OPTIONS),
        description="gcsfuse mount options for read-only mounts (metadata and file caching).",
    )
    write_mount_options: list[str] = Field(
        default_factory=lambda: list(WRITE_MOUNT_OPTIONS),
        description="gcsfuse mount options for read-write mounts.",
    )

    @field_validator("bucket")
    @classmethod
    def _bare_bucket(cls, value: str) -> str:
        if value.startswith("gs://") or "/" in value:
            raise ValueError(f"{value!r}: give the bare bucket name (no gs://, no path)")
        return value


class Checkpoints(Frozen):
    mode: Literal["gcs", "fuse"] = Field(
        "gcs",
        description="gcs: the trainer writes gs:// paths directly (Orbax commits with a marker file; safe on "
        "any bucket). fuse: a read-write GCS FUSE mount; Orbax renames step directories, which is atomic "
        "only on a hierarchical-namespace bucket.",
    )
    gcs_path: str = Field("gs://sawt-checkpoints/runs", description="Run directories' parent in gcs mode.")
    bucket: FuseBucket = Field(
        default_factory=lambda: FuseBucket(bucket="sawt-checkpoints", mount_path="/checkpoints"),
        description="The bucket mounted in fuse mode.",
    )

    @field_validator("gcs_path")
    @classmethod
    def _gs_path(cls, value: str) -> str:
        if not value.startswith("gs://"):
            raise ValueError(f"{value!r} must start with gs://")
        return value.rstrip("/")

    def checkpoint_dir(self, run_name: str) -> str:
        """The run's ``checkpoint.dir``: gs://... in gcs mode, on the checkpoints mount in fuse mode."""
        if self.mode == "gcs":
            return f"{self.gcs_path}/{run_name}/checkpoints"
        return f"{self.bucket.mount_path.rstrip('/')}/{run_name}/checkpoints"


class Storage(Frozen):
    data: FuseBucket = Field(
        default_factory=lambda: FuseBucket(bucket="sawt-data", mount_path="/data"),
        description="Training data (ArrayRecord shards): read-only with caching for train and batch-infer, "
        "read-write for data-convert.",
    )
    models: FuseBucket = Field(
        default_factory=lambda: FuseBucket(bucket="sawt-models", mount_path="/models"),
        description="Model checkpoints (converted weights, exported runs): read-only for serve and "
        "batch-infer, read-write for ckpt-convert.",
    )
    runs: FuseBucket = Field(
        default_factory=lambda: FuseBucket(bucket="sawt-runs", mount_path="/runs"),
        description="Run directories (config, logs, metrics, summary, the run's tokenizer and companion files; "
        "checkpoints live at storage.checkpoints): read-write for train, read-only for batch-infer and serve, "
        "which find the run's checkpoints through it.",
    )
    outputs: FuseBucket = Field(
        default_factory=lambda: FuseBucket(bucket="sawt-outputs", mount_path="/outputs"),
        description="Batch inference results (read-write).",
    )
    checkpoints: Checkpoints = Field(default_factory=Checkpoints, description="Training checkpoints.")
    sidecar_limits: dict[str, str] = Field(
        default_factory=lambda: {"cpu-limit": "0", "memory-limit": "0", "ephemeral-storage-limit": "0"},
        description='gke-gcsfuse/<key> pod annotations for the FUSE sidecar; "0" means no limit.',
    )
    file_cache_size: str = Field(
        "64Gi",
        description="Size (Mi/Gi/Ti) of the memory-backed gke-gcsfuse-cache volume (TPU VMs have no local "
        "SSD), shared by the read-only mounts, whose file-cache:max-size-mb is set to fit in it; empty to "
        "let the sidecar use its default ephemeral storage and the mount options as given.",
    )

    @field_validator("file_cache_size")
    @classmethod
    def _binary_size(cls, value: str) -> str:
        if value and not re.match(r"^[1-9][0-9]*(Mi|Gi|Ti)$", value):
            raise ValueError(f"{value!r}: give a size in Mi, Gi or Ti (e.g. 64Gi), or empty")
        return value

    def file_cache_mib(self) -> int:
        """The cache volume's size in MiB (0 when there is none)."""
        if not self.file_cache_size:
            return 0
        number, unit = int(self.file_cache_size[:-2]), self.file_cache_size[-2:]
        return number * {"Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}[unit]

    @field_validator("sidecar_limits")
    @classmethod
    def _known_sidecar_keys(cls, value: dict[str, str]) -> dict[str, str]:
        known = {f"{r}-{k}" for r in ("cpu", "memory", "ephemeral-storage") for k in ("limit", "request")}
        for key, quantity in value.items():
            if key not in known:
                raise ValueError(f"unknown sidecar key {key!r}; known: {', '.join(sorted(known))}")
            if not QUANTITY.match(str(quantity)):
                raise ValueError(f"{key}: {quantity!r} is not a Kubernetes quantity")
        return value


class Network(Frozen):
    host_network: bool = Field(
        False,
        description="hostNetwork for TPU pods (faster DCN for multislice). Ports then bind on the node, "
        "so they must avoid the TPU runtime's; GCS FUSE needs GKE 1.33.3+ (Standard).",
    )


def _check_port(value: int) -> int:
    if value in tpu_types.TPU_RESERVED_PORTS:
        reserved = ", ".join(str(p) for p in sorted(tpu_types.TPU_RESERVED_PORTS))
        raise ValueError(f"port {value} is used by the TPU runtime ({reserved})")
    return value


class Metrics(Frozen):
    port: int = Field(
        9400, ge=1024, le=65535, description="Trainer /metrics port (clear of TPU runtime ports)."
    )

    _port = field_validator("port")(_check_port)


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for name in env:
        if SECRET_NAME_HINT.search(name):
            raise ValueError(
                f"env {name}: looks like a secret; secret values never go into manifests "
                "(mount a Secret or use Workload Identity)"
            )
    return env


class Train(Frozen):
    run_name: str = Field("qwen3-asr", description="JobSet name and run directory name.")
    config: dict[str, Any] = Field(
        default_factory=lambda: {"base": "qwen3-omni-30b-a3b"},
        description="The experiment config (as `sawt train --config` reads it), shipped as a ConfigMap.",
    )
    overrides: list[str] = Field(
        default_factory=list,
        description="Dotted key=value overrides after the config and the pipeline's own (load_from, data.dir, "
        "tokenizer.dir, checkpoint.dir), so they can change those too.",
    )
    load_from: str | None = Field(
        "converted",
        description="What the run starts from when it has no checkpoint of its own: 'converted' (the model "
        "ckpt-convert writes, storage.models/<ckpt_convert.dst>, whose tokenizer it also uses), a path in the "
        "container, or null to leave load_from and tokenizer.dir to the config.",
    )
    data: str | None = Field(
        "converted",
        description="data.dir of the run: 'converted' (storage.data/<data_convert.dst>, what data-convert "
        "writes), a directory under storage.data, or null to leave it to the config.",
    )
    resources: Resources = Field(default_factory=Resources, description="Per-pod resources besides TPUs.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment (no secrets).")
    max_restarts: int = Field(10, ge=0, description="JobSet restarts allowed (preemption, SIGTERM saves).")
    restart_exit_code: int = Field(
        42,
        ge=1,
        le=127,
        description="Exit code of the trainer after its SIGTERM checkpoint: restarts the JobSet.",
    )
    restart_strategy: Literal["Recreate", "BlockingRecreate"] = Field(
        "BlockingRecreate",
        description="BlockingRecreate deletes every old pod before new ones start, so old and new pods never "
        "compete for the slice.",
    )
    termination_grace_seconds: int = Field(
        300, ge=0, description="Time between SIGTERM and SIGKILL: the trainer saves a checkpoint in it."
    )
    ttl_seconds_after_finished: int = Field(43200, ge=0, description="Delete the finished JobSet after this.")

    _env = field_validator("env")(_check_env)


def _tensor_parallel_field(command: str, tpu_key: str) -> Any:
    """The ``tensor_parallel`` value of a serving workload (serve, batch-infer)."""
    return Field(
        None,
        ge=1,
        description=f"`--tensor-parallel` of every `{command}` process: chips of its host the weights are "
        f"sharded over. Default (null): `{tpu_key}`'s chips per host from the TPU table (4 on v4), since the "
        "bf16 thinker does not fit one chip. At most the chips per host.",
    )


class BatchInfer(Frozen):
    name: str = Field("batch-infer", description="JobSet name.")
    run: str | None = Field(
        None,
        description="Fine-tuned run to transcribe with: a run directory under storage.runs (default: "
        "train.run_name); its best checkpoint by validation WER, else its latest (or `step`).",
    )
    step: int | None = Field(
        None, ge=0, description="Pin a checkpoint step of the run (default: best/latest)."
    )
    model: str | None = Field(
        None,
        description="Instead of a run: a model directory under storage.models (e.g. ckpt_convert.dst for the "
        "base model's baseline).",
    )
    data: str = Field("test", description="Data directory under storage.data.mount_path.")
    out: str = Field("batch-infer", description="Output directory under storage.outputs.mount_path.")
    args: list[str] = Field(default_factory=list, description="Extra `sawt batch-infer` arguments.")
    tensor_parallel: int | None = _tensor_parallel_field("sawt batch-infer", "tpu")
    resources: Resources = Field(default_factory=Resources, description="Per-pod resources besides TPUs.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment (no secrets).")
    max_restarts: int = Field(3, ge=0, description="JobSet restarts allowed.")
    ttl_seconds_after_finished: int = Field(43200, ge=0, description="Delete the finished JobSet after this.")

    _env = field_validator("env")(_check_env)


class ConvertJob(Frozen):
    name: str = Field(..., description="Job name.")
    src: str = Field(..., description="Input path, relative to the job's bucket mount.")
    dst: str = Field(..., description="Output path, relative to the job's bucket mount.")
    shards: int = Field(
        1,
        ge=1,
        description="Completions of the Indexed Job. Above 1, index i gets `--shard-index i --num-shards N` "
        "and converts its share of the inputs.",
    )
    parallelism: int = Field(1, ge=1, description="Pods running at once (at most `shards`).")
    args: list[str] = Field(default_factory=list, description="Extra arguments for the convert command.")
    resources: Resources = Field(default_factory=Resources, description="Per-pod CPU/memory.")
    backoff_limit_per_index: int = Field(
        2, ge=0, description="Retries of one shard before it counts as failed."
    )
    ttl_seconds_after_finished: int = Field(43200, ge=0, description="Delete the finished Job after this.")

    @model_validator(mode="after")
    def _parallelism_le_shards(self) -> ConvertJob:
        if self.parallelism > self.shards:
            raise ValueError(f"parallelism {self.parallelism} exceeds shards {self.shards}")
        return self


class Hpa(Frozen):
    enabled: bool = Field(False, description="Render a HorizontalPodAutoscaler for the server Deployment.")
    min_replicas: int = Field(1, ge=1, description="Fewest server replicas.")
    max_replicas: int = Field(4, ge=1, description="Most server replicas (each takes a TPU slice).")
    metric: str = Field(
        "prometheus.googleapis.com|sawt_num_requests_waiting|gauge",
        description="Per-pod metric to scale on, as the custom metrics adapter names it (this is GMP's "
        "name for sawt_num_requests_waiting).",
    )
    target_average: str = Field("4", description="Target average of the metric per pod.")


class Serve(Frozen):
    name: str = Field("server", description="Deployment / LeaderWorkerSet and Service name suffix.")
    tpu: TpuValues = Field(
        default_factory=lambda: TpuValues(type="v4", topology="2x2x1"),
        description="Server slice. Single-host: a Deployment; multi-host: a LeaderWorkerSet of `hosts` pods.",
    )
    pool: Literal["dedicated", "training"] = Field(
        "dedicated",
        description="dedicated: the slice of serve.tpu (default a single-host v4 2x2x1 pool: a Deployment). "
        "training: the training slice (tpu.type/topology), for a cluster whose only TPU pool is the v4-32: a "
        "LeaderWorkerSet over its hosts, which cannot run while the train JobSet holds the pool.",
    )
    run: str | None = Field(
        None,
        description="Fine-tuned run to serve: a run directory under storage.runs (default: train.run_name); "
        "its best checkpoint by validation WER, else its latest (or `step`).",
    )
    step: int | None = Field(
        None, ge=0, description="Pin a checkpoint step of the run (default: best/latest)."
    )
    model: str | None = Field(
        None,
        description="Instead of a run: a model directory under storage.models (e.g. the converted base).",
    )
    port: int = Field(
        8000, ge=1024, le=65535, description="HTTP port (OpenAI API, /health, /ready, /metrics)."
    )
    replicas: int = Field(1, ge=1, description="Server replicas (each a slice).")
    args: list[str] = Field(default_factory=list, description="Extra `sawt serve` arguments.")
    tensor_parallel: int | None = _tensor_parallel_field("sawt serve", "serve.tpu")
    resources: Resources = Field(default_factory=Resources, description="Per-pod resources besides TPUs.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment (no secrets).")
    termination_grace_seconds: int = Field(
        60, ge=0, description="SIGTERM to SIGKILL; the server drains in-flight requests meanwhile."
    )
    startup_seconds: int = Field(
        1800, ge=60, description="Time allowed to load the model before liveness counts."
    )
    hpa: Hpa = Field(default_factory=Hpa, description="Optional autoscaling (Deployment mode only).")

    _env = field_validator("env")(_check_env)

    _port = field_validator("port")(_check_port)

    def slice_of(self, training: TpuValues) -> tpu_types.TpuSlice:
        """The server's slice: serve.tpu, or the training slice with pool: training."""
        return training.slice if self.pool == "training" else self.tpu.slice


class Alerts(Frozen):
    train_stall_minutes: int = Field(
        15, ge=1, description="Alert when the train step has not moved this long."
    )
    nonfinite_skips: int = Field(
        1, ge=1, description="Alert when this many NaN/Inf steps were skipped in 15m."
    )
    server_5xx_ratio: float = Field(0.05, gt=0, le=1, description="Alert above this share of 5xx responses.")
    p99_latency_seconds: float = Field(30.0, gt=0, description="Alert when end-to-end p99 exceeds this.")
    checkpoint_age_minutes: int = Field(
        120, ge=1, description="Alert when the last checkpoint of a running trainer is older than this."
    )
    goodput_ratio: float = Field(
        0.5, gt=0, le=1, description="Alert when a run's goodput stays below this share for 30 minutes."
    )
    goodput_min_hours: float = Field(
        1.0,
        ge=0,
        description="The goodput alert waits until the run has lasted this long (start-up dominates at first).",
    )


class Monitoring(Frozen):
    backend: Literal["gmp", "prometheus-operator"] = Field(
        "gmp",
        description="gmp: PodMonitoring + Rules; prometheus-operator: PodMonitor/ServiceMonitor + PrometheusRule.",
    )
    interval: str = Field("30s", description="Scrape interval.")
    operator_labels: dict[str, str] = Field(
        default_factory=lambda: {"release": "kube-prometheus-stack"},
        description="Labels that the Prometheus of kube-prometheus-stack selects monitors and rules by.",
    )
    dashboards: bool = Field(True, description="Render the Grafana dashboard ConfigMaps.")
    alerts: Alerts = Field(default_factory=Alerts, description="Alert thresholds.")

    @field_validator("interval")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not DURATION.match(value):
            raise ValueError(f"{value!r} is not a duration like 30s or 1m")
        return value


class Values(Frozen):
    name: str = Field(
        "sawt", description="Prefix of every object name and the app.kubernetes.io/instance label."
    )
    namespace: str = Field("sawt", description="Namespace of every namespaced object.")
    version: str = Field("0.1.0", description="app.kubernetes.io/version label.")
    images: Images = Field(default_factory=Images, description="Container images.")
    tpu: TpuValues = Field(default_factory=TpuValues, description="Slice of train and batch-infer.")
    service_account: ServiceAccount = Field(default_factory=ServiceAccount, description="Pod identity.")
    priority: Priority = Field(default_factory=Priority, description="Priority class of TPU workloads.")
    security: Security = Field(default_factory=Security, description="Security context defaults.")
    storage: Storage = Field(default_factory=Storage, description="GCS buckets and checkpoint location.")
    network: Network = Field(default_factory=Network, description="Pod networking of TPU workloads.")
    metrics: Metrics = Field(default_factory=Metrics, description="Trainer metrics endpoint.")
    train: Train = Field(default_factory=Train, description="The train JobSet.")
    batch_infer: BatchInfer = Field(default_factory=BatchInfer, description="The batch-infer JobSet.")
    data_convert: ConvertJob = Field(
        default_factory=lambda: ConvertJob(name="data-convert", src="tfrecord", dst="arrayrecord"),
        description="`sawt data convert` as an indexed CPU Job (paths under storage.data).",
    )
    ckpt_convert: ConvertJob = Field(
        default_factory=lambda: ConvertJob(name="ckpt-convert", src="hf/Qwen3-Omni-30B-A3B", dst="qwen3-asr"),
        description="`sawt convert hf-to-orbax` as a CPU Job (paths under storage.models).",
    )
    serve: Serve = Field(default_factory=Serve, description="The online server.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Scraping, alerts and dashboards.")

    @model_validator(mode="after")
    def _dns_names(self) -> Values:
        names = {
            "name": self.name,
            "namespace": self.namespace,
            "train.run_name": self.train.run_name,
            "batch_infer.name": self.batch_infer.name,
            "data_convert.name": self.data_convert.name,
            "ckpt_convert.name": self.ckpt_convert.name,
            "serve.name": self.serve.name,
            "service_account.name": self.service_account.name,
            "priority.class_name": self.priority.class_name,
        }
        for key, value in names.items():
            if not DNS_LABEL.match(value):
                raise ValueError(f"{key}: {value!r} is not a DNS label (lowercase letters, digits, '-')")
        if self.ckpt_convert.shards != 1:
            raise ValueError("ckpt_convert.shards: a checkpoint converts in one pod (shards must be 1)")
        if self.serve.port == self.metrics.port:
            raise ValueError(f"serve.port and metrics.port are both {self.metrics.port}")
        return self


def load_values(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Values:
    """Loads values from ``path`` (default k8s/values/v4-32.yaml) plus ``key=value`` overrides.

    Raises:
        ConfigError: naming the dotted key that is unknown or invalid, or the missing file.
    """
    source = Path(path) if path is not None else DEFAULT_VALUES
    if not source.is_file():
        raise configlib.ConfigError(f"values file {source} does not exist")
    return configlib.load(Values, source, list(overrides), presets_dir=VALUES_DIR)
