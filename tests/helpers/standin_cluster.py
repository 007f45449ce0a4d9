"""A stand-in for the cluster side of the rendered workloads: what the controllers and webhooks would make of
them, and the pods' own commands run as local processes.

GKE, the JobSet controller, the Job controller and the GKE TPU webhook cannot run here. This module does what
their sources and documentation say they do to our objects, and no more:

- `expand` turns a JobSet, Job or Deployment into the pods the controllers create: JobSet child Jobs
  ``<jobset>-<rjob>-<i>`` with the JobSet labels and annotations on Job and pod (kubernetes-sigs/jobset
  `pkg/controllers/jobset_controller.go` constructJob / labelAndAnnotateObject @ v0.10.1-v0.12.0) and the pod
  ``subdomain`` (the JobSet's headless Service) when DNS hostnames are on; the Job controller's Indexed-pod
  ``hostname`` ``<job>-<index>``, its ``batch.kubernetes.io/job-completion-index`` label and annotation and
  ``JOB_COMPLETION_INDEX`` env (kubernetes `pkg/controller/job/indexed_job_utils.go`); the GKE TPU webhook's
  ``TPU_WORKER_ID`` and ``TPU_WORKER_HOSTNAMES`` (``<job>-<k>.<subdomain>`` for every index) for Indexed
  Jobs with a subdomain, parallelism > 1 and ``google.com/tpu`` requests (gke-tpu.md §1(a)-8; the layout of
  the names is the one LWS's own injector writes, kubernetes-sigs/lws `pkg/utils/accelerators/tpu.go`); and
  the downward API (``fieldRef`` env) and ``$(VAR)`` expansion of env values and args.
- `LocalNode` runs a pod's container exactly as its manifest says (``args`` with the image's ``sawt`` on
  PATH, the env above) with three stand-ins for what a node gives a pod, each rewriting only what it must:
  every volume mount is a local directory (a GCS FUSE bucket is one directory per bucket, shared by all pods
  as the bucket is; a ConfigMap is its data written out; an emptyDir a per-pod directory), so container
  paths in args and env are replaced by those directories; ``gs://`` is the GCS emulator
  (tests/helpers/gcs.py); and the network: pods share this machine's 127.0.0.1 instead of having an IP each,
  so the pods' DNS names resolve to 127.0.0.1 (the headless Service's records) and the ports a container
  declares are remapped to free local ports in its args (a container runtime's port mapping). A TPU host's
  chips are that many fake CPU devices.
- `job_outcome` and `jobset_step` apply the rendered ``podFailurePolicy``/``backoffLimit`` and the JobSet
  ``failurePolicy`` to the pods' exit codes as their documentation defines them (Kubernetes "Pod failure
  policy" and Job backoff, kubernetes `pkg/controller/job`; jobset `pkg/controllers/failure_policy.go`: rules
  in order, first match wins, no match means RestartJobSet, restarts bounded by maxRestarts).
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from helpers.processes import free_port

TPU_RESOURCE = "google.com/tpu"
# kubernetes batch/v1 well-known labels (staging/src/k8s.io/api/batch/v1/types.go).
JOB_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# jobset api/jobset/v1alpha2/jobset_types.go and pkg/constants/constants.go.
JOBSET_KEYS = {
    "name": "jobset.sigs.k8s.io/jobset-name",
    "uid": "jobset.sigs.k8s.io/jobset-uid",
    "rjob": "jobset.sigs.k8s.io/replicatedjob-name",
    "rjob_replicas": "jobset.sigs.k8s.io/replicatedjob-replicas",
    "global_replicas": "jobset.sigs.k8s.io/global-replicas",
    "job_index": "jobset.sigs.k8s.io/job-index",
    "job_global_index": "jobset.sigs.k8s.io/job-global-index",
    "job_key": "jobset.sigs.k8s.io/job-key",
    "restart": "jobset.sigs.k8s.io/restart-attempt",
    "group": "jobset.sigs.k8s.io/group-name",
}


@dataclass
class Pod:
    """A pod as the controllers would create it, and where it came from."""

    workload: str
    name: str
    job: str  # owning Job ("" for a Deployment's pod)
    index: int | None  # completion index (Indexed Jobs)
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]
    hostname: str | None = None
    subdomain: str | None = None
    namespace: str = "default"
    injected_env: dict[str, str] = field(default_factory=dict)  # by controllers and webhooks

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.spec["containers"]  # sawt's pods have one container (the FUSE sidecar is GKE's)
        return container

    @property
    def tpu_chips(self) -> int:
        limits = self.container.get("resources", {}).get("limits", {})
        return int(limits.get(TPU_RESOURCE, 0))

    @property
    def fqdn(self) -> str | None:
        return f"{self.hostname}.{self.subdomain}" if self.hostname and self.subdomain else None

    def env(self) -> dict[str, str]:
        """The container's environment as the kubelet resolves it: the manifest's env (downward API and
        ``$(VAR)`` expanded, in order), then what the controllers and webhooks injected."""
        resolved: dict[str, str] = {}
        for var in [
            *self.container.get("env", []),
            *({"name": k, "value": v} for k, v in self.injected_env.items()),
        ]:
            if "value" in var:
                resolved[var["name"]] = expand_vars(str(var["value"]), resolved)
            else:
                resolved[var["name"]] = self._field(var["valueFrom"]["fieldRef"]["fieldPath"])
        return resolved

    def args(self) -> list[str]:
        env = self.env()
        return [expand_vars(arg, env) for arg in self.container.get("args", [])]

    def _field(self, path: str) -> str:
        # The downward API's fieldRef paths (kubernetes pkg/api/v1/pod ConvertDownwardAPIFieldLabel).
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            source = self.labels if match.group(1) == "labels" else self.annotations
            return source.get(match.group(2), "")
        return {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "status.podIP": "127.0.0.1",
            "spec.nodeName": "standin-node",
        }[path]


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (kubernetes third_party/forked/golang/expansion): defined variables
    are replaced, undefined references stay as written, ``$$`` is a literal ``$``."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", repl, text)


def _job_hash(namespace: str, name: str) -> str:
    # jobset jobset_controller.go jobHashKey: sha1 of "<namespace>/<name>".
    return hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()


def _job_pods(
    workload: str,
    job_name: str,
    namespace: str,
    job_spec: dict[str, Any],
    labels: dict[str, str],
    annotations: dict[str, str],
    subdomain: str | None,
) -> list[Pod]:
    template = job_spec["template"]
    indexed = job_spec.get("completionMode") == "Indexed"
    completions = int(job_spec.get("completions", 1))
    parallelism = int(job_spec.get("parallelism", 1))
    pods = []
    for index in range(completions):
        pod_labels = {**template.get("metadata", {}).get("labels", {}), **labels}
        pod_annotations = {**template.get("metadata", {}).get("annotations", {}), **annotations}
        # The Job controller's selector labels (pkg/controller/job; batch.kubernetes.io/ names since 1.27).
        uid = _job_hash(namespace, job_name)[:36]
        pod_labels.update(
            {"batch.kubernetes.io/job-name": job_name, "job-name": job_name, "batch.kubernetes.io/controller-uid": uid, "controller-uid": uid}
        )  # fmt: skip
        injected: dict[str, str] = {}
        hostname = None
        if indexed:
            pod_labels[JOB_COMPLETION_INDEX] = str(index)
            pod_annotations[JOB_COMPLETION_INDEX] = str(index)
            # indexed_job_utils.go: hostname <job>-<index>, JOB_COMPLETION_INDEX from the annotation.
            hostname = f"{job_name}-{index}"
        spec = copy.deepcopy(template["spec"])
        if subdomain:
            spec["subdomain"] = subdomain
        pod = Pod(
            workload=workload,
            name=f"{job_name}-{index}-{_job_hash(job_name, str(index))[:5]}",
            job=job_name,
            index=index if indexed else None,
            labels=pod_labels,
            annotations=pod_annotations,
            spec=spec,
            hostname=hostname,
            subdomain=subdomain,
            namespace=namespace,
            injected_env=injected,
        )
        if indexed:
            injected["JOB_COMPLETION_INDEX"] = str(index)
        if indexed and subdomain and parallelism > 1 and pod.tpu_chips:
            # The GKE TPU webhook: worker id and every worker's hostname, ordered by worker id.
            injected["TPU_WORKER_ID"] = str(index)
            injected["TPU_WORKER_HOSTNAMES"] = ",".join(
                f"{job_name}-{k}.{subdomain}" for k in range(parallelism)
            )
        pods.append(pod)
    return pods


def expand(obj: dict[str, Any], workload: str, restart_attempt: int = 0) -> list[Pod]:
    """The pods the controllers would create for ``obj`` (a JobSet, Job or Deployment)."""
    kind, meta = obj["kind"], obj["metadata"]
    namespace = meta.get("namespace", "default")
    if kind == "Job":
        return _job_pods(
            workload,
            meta["name"],
            namespace,
            obj["spec"],
            {},
            {},
            obj["spec"]["template"]["spec"].get("subdomain"),
        )
    if kind == "Deployment":
        template = obj["spec"]["template"]
        return [
            Pod(
                workload,
                f"{meta['name']}-{_job_hash(namespace, meta['name'])[:10]}-{i:05d}",
                "",
                None,
                dict(template["metadata"].get("labels", {})),
                dict(template["metadata"].get("annotations", {})),
                copy.deepcopy(template["spec"]),
                namespace=namespace,
            )
            for i in range(int(obj["spec"].get("replicas", 1)))
        ]
    if kind != "JobSet":
        raise ValueError(f"{kind} makes no pods")
    spec = obj["spec"]
    network = spec.get("network", {})
    # The webhook defaults enableDNSHostnames to true and the subdomain to the JobSet's name.
    subdomain = (
        (network.get("subdomain") or meta["name"]) if network.get("enableDNSHostnames", True) else None
    )
    rjobs = spec["replicatedJobs"]
    global_replicas = sum(int(r.get("replicas", 1)) for r in rjobs)
    pods = []
    global_index = 0
    for rjob in rjobs:
        replicas = int(rjob.get("replicas", 1))
        for job_index in range(replicas):
            job_name = f"{meta['name']}-{rjob['name']}-{job_index}"
            keys = {
                JOBSET_KEYS["name"]: meta["name"],
                JOBSET_KEYS["uid"]: _job_hash(namespace, meta["name"])[:36],
                JOBSET_KEYS["rjob"]: rjob["name"],
                JOBSET_KEYS["restart"]: str(restart_attempt),
                JOBSET_KEYS["rjob_replicas"]: str(replicas),
                JOBSET_KEYS["global_replicas"]: str(global_replicas),
                JOBSET_KEYS["job_index"]: str(job_index),
                JOBSET_KEYS["job_key"]: _job_hash(namespace, job_name),
                JOBSET_KEYS["job_global_index"]: str(global_index),
                JOBSET_KEYS["group"]: rjob.get("groupName", "default"),
            }
            annotations = dict(keys)
            if "alpha.jobset.sigs.k8s.io/exclusive-topology" in meta.get("annotations", {}):
                annotations["alpha.jobset.sigs.k8s.io/exclusive-topology"] = meta["annotations"][
                    "alpha.jobset.sigs.k8s.io/exclusive-topology"
                ]
            job_spec = copy.deepcopy(rjob["template"]["spec"])
            # The webhook's defaults for a replicated job (jobset_webhook.go Default).
            job_spec.setdefault("completionMode", "Indexed")
            job_spec["template"]["spec"].setdefault("restartPolicy", "OnFailure")
            pods += _job_pods(workload, job_name, namespace, job_spec, keys, annotations, subdomain)
            global_index += 1
    return pods


# ---------------------------------------------------------------------------------------------------------
# Failure policies, as documented


@dataclass(frozen=True)
class Exit:
    """A pod's container terminated: when, and with which exit code (128+N for a signal, as runtimes report)."""

    at: float
    pod: str
    code: int


def container_exit_code(returncode: int) -> int:
    """A process's return code as the container runtime reports the container's exit code."""
    return 128 - returncode if returncode < 0 else returncode


def job_outcome(job_spec: dict[str, Any], exits: Iterable[Exit], container: str) -> tuple[str, str]:
    """(``Complete`` | ``Failed``, reason) of a Job whose pods ended with ``exits`` (restartPolicy Never).

    Kubernetes "Pod failure policy": for each failed pod, in the order they failed, the first rule whose
    ``onExitCodes`` matches decides: FailJob fails the Job at once with reason PodFailurePolicy, Ignore does not
    count the failure, Count (or no match) counts it against ``backoffLimit``; more counted failures than
    backoffLimit fail the Job with reason BackoffLimitExceeded. With every completion succeeded, Complete.
    The first failure that fails the Job decides; the controller then terminates the remaining pods.
    """
    backoff_limit = int(job_spec.get("backoffLimit", 6))
    rules = (job_spec.get("podFailurePolicy") or {}).get("rules", [])
    counted = 0
    succeeded = 0
    for exit_ in sorted(exits, key=lambda e: e.at):
        if exit_.code == 0:
            succeeded += 1
            continue
        action = "Count"
        for rule in rules:
            on = rule.get("onExitCodes")
            if on is None or on.get("containerName", container) != container:
                continue
            inside = exit_.code in on["values"]
            if (on["operator"] == "In") == inside:
                action = rule["action"]
                break
        if action == "FailJob":
            return "Failed", "PodFailurePolicy"
        if action == "Ignore":
            continue
        counted += 1
        if counted > backoff_limit:
            return "Failed", "BackoffLimitExceeded"
    completions = int(job_spec.get("completions", 1))
    if succeeded >= completions:
        return "Complete", ""
    return "Running", ""


def jobset_step(jobset_spec: dict[str, Any], failed_reason: str, restarts: int) -> tuple[str, str]:
    """What the JobSet controller does when a child Job failed with ``failed_reason``: (``restart`` | ``fail``,
    the rule that decided). Rules in order, the first whose onJobFailureReasons matches (an empty list
    matches any); none matching means RestartJobSet; a restart beyond maxRestarts fails the JobSet."""
    policy = jobset_spec.get("failurePolicy")
    if policy is None:
        return "fail", "no failurePolicy"
    action, name = "RestartJobSet", "default (no rule matched)"
    for rule in policy.get("rules", []):
        reasons = rule.get("onJobFailureReasons") or []
        if not reasons or failed_reason in reasons:
            action, name = rule["action"], rule["name"]
            break
    if action == "FailJobSet":
        return "fail", name
    if action == "RestartJobSet" and restarts >= int(policy.get("maxRestarts", 0)):
        return "fail", f"{name}: maxRestarts {policy.get('maxRestarts', 0)} reached"
    return "restart", name


# ---------------------------------------------------------------------------------------------------------
# Running pods as local processes


def _rewrite_paths(text: str, mapping: list[tuple[str, str]]) -> str:
    """Container paths -> local directories, where a path starts a value (an arg, or after '=')."""
    for container_path, local in mapping:
        text = re.sub(
            rf"(^|=){re.escape(container_path)}(?=/|$)", lambda m, local=local: m.group(1) + local, text
        )
    return text


@dataclass
class Running:
    pod: Pod
    process: subprocess.Popen
    log: Path
    started: float
    ports: dict[int, int]  # declared containerPort -> local port
    exit: Exit | None = None

    def poll(self) -> Exit | None:
        if self.exit is None and self.process.poll() is not None:
            self.exit = Exit(time.monotonic(), self.pod.name, container_exit_code(self.process.returncode))
        return self.exit

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class LocalNode:
    """Runs pods as local processes under ``root`` (see the module docstring for what stands in for what)."""

    def __init__(
        self, root: Path, objects: list[dict[str, Any]], gcs_env: dict[str, str], cpu_pool_devices: int = 1
    ):
        self.root = root
        self.gcs_env = gcs_env
        self.cpu_pool_devices = cpu_pool_devices
        self.config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
        # The image puts `sawt` on PATH: here, this interpreter's environment.
        self.bin = str(Path(sys.executable).parent)

    def bucket_dir(self, bucket: str) -> Path:
        path = self.root / "buckets" / bucket
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_objects(self, objects: list[dict[str, Any]]) -> None:
        self.config_maps.update({o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"})

    def _mounts(self, pod: Pod) -> list[tuple[str, str]]:
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        mapping = []
        for mount in pod.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if mount["mountPath"] == "/dev/shm":
                continue  # the process uses this machine's /dev/shm
            if "csi" in volume:
                local = self.bucket_dir(volume["csi"]["volumeAttributes"]["bucketName"])
            elif "configMap" in volume:
                local = self.root / "configmaps" / pod.name / volume["configMap"]["name"]
                local.mkdir(parents=True, exist_ok=True)
                for key, text in self.config_maps[volume["configMap"]["name"]].get("data", {}).items():
                    (local / key).write_text(text)
            elif "emptyDir" in volume:
                local = self.root / "pods" / pod.name / "volumes" / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
            else:
                raise ValueError(f"{pod.name}: no stand-in for volume {volume}")
            mapping.append((mount["mountPath"].rstrip("/"), str(local)))
        return sorted(mapping, key=lambda m: -len(m[0]))

    def start(self, pod: Pod, peers: list[Pod], hold_ports: dict[int, int] | None = None) -> Running:
        """Starts ``pod``'s container; ``peers`` are the pods whose DNS names it may look up."""
        mapping = self._mounts(pod)
        ports = dict(hold_ports or {})
        for port in pod.container.get("ports", []):
            ports.setdefault(int(port["containerPort"]), free_port())
        env = pod.env()
        names = sorted({n for p in peers for n in (p.fqdn, p.hostname) if n}, key=len, reverse=True)

        def local(value: str) -> str:
            value = _rewrite_paths(value, mapping)
            for name in names:  # the headless Service's DNS records: every pod is 127.0.0.1 here
                value = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", "127.0.0.1", value)
            return value

        args = [local(a) for a in pod.args()]
        for container_port, local_port in ports.items():
            args = [re.sub(rf"(?<![0-9]){container_port}(?![0-9])", str(local_port), a) for a in args]
        home = self.root / "pods" / pod.name / "home"
        home.mkdir(parents=True, exist_ok=True)
        process_env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            # The image's installed packages are this checkout (a test run may point PYTHONPATH at it).
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
            # The node: no TPU here, so a host's chips are fake CPU devices (CPU pools get a few).
            "JAX_PLATFORMS": "cpu",
            "TPU_SKIP_MDS_QUERY": "1",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={pod.tpu_chips or self.cpu_pool_devices}",
            **self.gcs_env,
            **{k: local(v) for k, v in env.items()},
        }
        log = self.root / "logs" / f"{pod.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("w")
        process = subprocess.Popen(args, env=process_env, cwd=home, stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        return Running(pod, process, log, time.monotonic(), ports)

    def run_job(self, pods: list[Pod], timeout: float, on_tick=None) -> list[Running]:
        """Starts every pod of a Job/JobSet (each Job runs all its pods at once: parallelism = completions) and
        waits for all to end; ``on_tick(running)`` may act on them meanwhile (signal, kill)."""
        running = [self.start(pod, pods) for pod in pods]
        deadline = time.monotonic() + timeout
        try:
            while any(r.poll() is None for r in running):
                if on_tick is not None:
                    on_tick(running)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{pods[0].job}: pods still running after {timeout:.0f}s")
                time.sleep(0.2)
        finally:
            stop(running)
        return running


def stop(running: list[Running], grace: float = 30.0) -> None:
    """SIGTERM what still runs, then SIGKILL after ``grace`` (the kubelet's termination)."""
    alive = [r for r in running if r.process.poll() is None]
    for r in alive:
        r.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for r in alive:
        try:
            r.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.process.kill()
            r.process.wait()
        r.poll()


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``path``: to show a read-only mount was not written."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def config_map_text(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: yaml.safe_load(text) for key, text in obj.get("data", {}).items()}


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
