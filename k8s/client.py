"""Applies, inspects and deletes rendered workloads through the `kubernetes` Python client.

Core kinds go through their typed APIs, custom resources (JobSet, LeaderWorkerSet, PodMonitoring, Rules,
prometheus-operator objects) through the custom-objects API. Every write is a server-side apply
(``application/apply-patch+yaml``, field manager ``sawt-deploy``, strict field validation), so re-applying
is idempotent. Responses are read as plain JSON (``_preload_content=False``), never as generated models,
so unknown status fields cannot break `status`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

FIELD_MANAGER = "sawt-deploy"
APPLY_PATCH = "application/apply-patch+yaml"


class DeployError(RuntimeError):
    """A cluster operation failed; the message says what to do."""


@dataclass(frozen=True)
class Kind:
    """Where the API serves a kind: typed API (core) or custom-objects coordinates (CRDs)."""

    api: str  # kubernetes.client API class, or "custom"
    resource: str  # snake_case suffix of the typed methods, or the plural of a custom resource
    namespaced: bool = True
    crd: str = ""  # the CRD's name, for the "not installed" error


KINDS: dict[tuple[str, str], Kind] = {
    ("v1", "ServiceAccount"): Kind("CoreV1Api", "service_account"),
    ("v1", "ConfigMap"): Kind("CoreV1Api", "config_map"),
    ("v1", "Service"): Kind("CoreV1Api", "service"),
    ("apps/v1", "Deployment"): Kind("AppsV1Api", "deployment"),
    ("batch/v1", "Job"): Kind("BatchV1Api", "job"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): Kind("AutoscalingV2Api", "horizontal_pod_autoscaler"),
    ("scheduling.k8s.io/v1", "PriorityClass"): Kind("SchedulingV1Api", "priority_class", namespaced=False),
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): Kind("custom", "jobsets", crd="jobsets.jobset.x-k8s.io"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): Kind(
        "custom", "leaderworkersets", crd="leaderworkersets.leaderworkerset.x-k8s.io"
    ),
    ("monitoring.googleapis.com/v1", "PodMonitoring"): Kind(
        "custom", "podmonitorings", crd="podmonitorings.monitoring.googleapis.com"
    ),
    ("monitoring.googleapis.com/v1", "Rules"): Kind("custom", "rules", crd="rules.monitoring.googleapis.com"),
    ("monitoring.coreos.com/v1", "PodMonitor"): Kind(
        "custom", "podmonitors", crd="podmonitors.monitoring.coreos.com"
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): Kind(
        "custom", "servicemonitors", crd="servicemonitors.monitoring.coreos.com"
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): Kind(
        "custom", "prometheusrules", crd="prometheusrules.monitoring.coreos.com"
    ),
}
# What each CRD's controller is, for the "install it" hint.
CRD_HINTS = {
    "jobset.x-k8s.io": "the JobSet controller (kubectl apply --server-side -f <jobset release manifests.yaml>)",
    "leaderworkerset.x-k8s.io": "the LeaderWorkerSet controller (lws release manifests)",
    "monitoring.googleapis.com": "Google Cloud Managed Service for Prometheus (enabled by default on GKE)",
    "monitoring.coreos.com": "prometheus-operator (e.g. the kube-prometheus-stack chart)",
}


def describe(obj: dict[str, Any]) -> str:
    """``kind/name`` plus the namespace, as kubectl prints it."""
    meta = obj["metadata"]
    where = f" -n {meta['namespace']}" if meta.get("namespace") else ""
    return f"{obj['kind'].lower()}/{meta['name']}{where}"


def kind_of(obj: dict[str, Any]) -> Kind:
    key = (obj["apiVersion"], obj["kind"])
    if key not in KINDS:
        raise DeployError(f"{describe(obj)}: sawt deploy does not know how to apply {key[1]} ({key[0]})")
    return KINDS[key]


def connect(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ApiClient from a kubeconfig (``--kubeconfig``, $KUBECONFIG or ~/.kube/config), or in-cluster config.

    Raises:
        DeployError: when no configuration can be found, with the command that creates one.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (ConfigException, FileNotFoundError, TypeError) as kube_err:
        try:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise DeployError(
                f"no usable kubeconfig ({source}: {kube_err}); get one with "
                "`gcloud container clusters get-credentials CLUSTER --location LOCATION`"
            ) from None
    return client.ApiClient(configuration)


def _json(response: Any) -> dict[str, Any]:
    data = response.data
    return json.loads(data) if data else {}


class Cluster:
    """The operations `sawt deploy` needs, over one ApiClient."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._client_module = client
        self.api_client = api_client
        self._checked_groups: set[str] = set()

    # -- plumbing ------------------------------------------------------------------------------------------

    def _typed(self, kind: Kind) -> Any:
        return getattr(self._client_module, kind.api)(self.api_client)

    def _call(self, what: str, fn: Callable[[], Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return _json(fn())
        except ApiException as err:
            raise DeployError(f"{what}: {err.status} {err.reason}: {_status_message(err.body)}") from None
        except HTTPError as err:
            host = self.api_client.configuration.host
            raise DeployError(f"{what}: cannot reach the API server at {host}: {err}") from None

    def require_crd(self, api_version: str, kind: Kind) -> None:
        """Raises a clear DeployError when the cluster does not serve ``api_version``/``kind``."""
        from kubernetes.client.exceptions import ApiException

        if kind.api != "custom" or api_version in self._checked_groups:
            return
        group, version = api_version.split("/")
        try:
            resources = _json(
                self._client_module.CustomObjectsApi(self.api_client).get_api_resources(
                    group, version, _preload_content=False
                )
            )
        except ApiException as err:
            if err.status != 404:
                raise DeployError(f"discovery of {api_version}: {err.status} {err.reason}") from None
            resources = {"resources": []}
        if not any(r.get("name") == kind.resource for r in resources.get("resources", [])):
            raise DeployError(
                f"the cluster has no {kind.crd} CRD ({api_version} is not served): install "
                f"{CRD_HINTS.get(group, 'its controller')} first"
            )
        self._checked_groups.add(api_version)

    # -- operations ----------------------------------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side applies one object and returns what the server stored."""
        kind = kind_of(obj)
        self.require_crd(obj["apiVersion"], kind)
        name, namespace = obj["metadata"]["name"], obj["metadata"].get("namespace")
        options = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "field_validation": "Strict",
            "_content_type": APPLY_PATCH,
            "_preload_content": False,
        }
        if kind.api == "custom":
            group, version = obj["apiVersion"].split("/")
            api = self._client_module.CustomObjectsApi(self.api_client)
            call = lambda: api.patch_namespaced_custom_object(  # noqa: E731
                group, version, namespace, kind.resource, name, obj, **options
            )
        elif kind.namespaced:
            method = getattr(self._typed(kind), f"patch_namespaced_{kind.resource}")
            call = lambda: method(name, namespace, obj, **options)  # noqa: E731
        else:
            method = getattr(self._typed(kind), f"patch_{kind.resource}")
            call = lambda: method(name, obj, **options)  # noqa: E731
        return self._call(f"apply {describe(obj)}", call)

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The live object, or None when it does not exist."""
        from kubernetes.client.exceptions import ApiException

        kind = kind_of(obj)
        self.require_crd(obj["apiVersion"], kind)
        name, namespace = obj["metadata"]["name"], obj["metadata"].get("namespace")
        try:
            if kind.api == "custom":
                group, version = obj["apiVersion"].split("/")
                api = self._client_module.CustomObjectsApi(self.api_client)
                response = api.get_namespaced_custom_object(
                    group, version, namespace, kind.resource, name, _preload_content=False
                )
            elif kind.namespaced:
                method = getattr(self._typed(kind), f"read_namespaced_{kind.resource}")
                response = method(name, namespace, _preload_content=False)
            else:
                response = getattr(self._typed(kind), f"read_{kind.resource}")(name, _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return None
            raise DeployError(
                f"get {describe(obj)}: {err.status} {err.reason}: {_status_message(err.body)}"
            ) from None
        return _json(response)

    def delete(self, obj: dict[str, Any]) -> bool:
        """Deletes one object with its dependents (background propagation); False when it was already gone."""
        from kubernetes.client.exceptions import ApiException

        kind = kind_of(obj)
        self.require_crd(obj["apiVersion"], kind)
        name, namespace = obj["metadata"]["name"], obj["metadata"].get("namespace")
        options = {"propagation_policy": "Background", "_preload_content": False}
        try:
            if kind.api == "custom":
                group, version = obj["apiVersion"].split("/")
                api = self._client_module.CustomObjectsApi(self.api_client)
                api.delete_namespaced_custom_object(group, version, namespace, kind.resource, name, **options)
            elif kind.namespaced:
                getattr(self._typed(kind), f"delete_namespaced_{kind.resource}")(name, namespace, **options)
            else:
                getattr(self._typed(kind), f"delete_{kind.resource}")(name, **options)
        except ApiException as err:
            if err.status == 404:
                return False
            raise DeployError(
                f"delete {describe(obj)}: {err.status} {err.reason}: {_status_message(err.body)}"
            ) from None
        return True

    def list(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Jobs or Pods in ``namespace`` matching ``label_selector``, as dicts."""
        if kind == "Job":
            api = self._client_module.BatchV1Api(self.api_client)
            call = lambda: api.list_namespaced_job(  # noqa: E731
                namespace, label_selector=label_selector, _preload_content=False
            )
        elif kind == "Pod":
            api = self._client_module.CoreV1Api(self.api_client)
            call = lambda: api.list_namespaced_pod(  # noqa: E731
                namespace, label_selector=label_selector, _preload_content=False
            )
        else:
            raise ValueError(kind)
        return self._call(f"list {kind.lower()}s -l {label_selector}", call).get("items", [])

    def pod_log(self, namespace: str, pod: str, container: str | None, tail: int | None) -> str:
        api = self._client_module.CoreV1Api(self.api_client)
        from kubernetes.client.exceptions import ApiException

        try:
            response = api.read_namespaced_pod_log(
                pod, namespace, container=container, tail_lines=tail, _preload_content=False
            )
        except ApiException as err:
            raise DeployError(
                f"logs of pod/{pod}: {err.status} {err.reason}: {_status_message(err.body)}"
            ) from None
        return response.data.decode("utf-8", errors="replace")


def _status_message(body: Any) -> str:
    try:
        return json.loads(body).get("message", body)
    except (TypeError, ValueError):
        return str(body or "").strip()


# ---------------------------------------------------------------------------------------------------------
# Status summaries


def pod_selector(obj: dict[str, Any]) -> str | None:
    """The label selector of the pods a workload object owns, or None when it owns no pods."""
    name = obj["metadata"]["name"]
    kind = obj["kind"]
    if kind == "JobSet":
        return f"jobset.sigs.k8s.io/jobset-name={name}"
    if kind == "Job":
        return f"batch.kubernetes.io/job-name={name}"
    if kind == "LeaderWorkerSet":
        return f"leaderworkerset.sigs.k8s.io/name={name}"
    if kind == "Deployment":
        labels = obj["spec"]["selector"]["matchLabels"]
        return ",".join(f"{k}={v}" for k, v in labels.items())
    return None


def _condition(obj: dict[str, Any], *types: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return cond
    return None


def _pod_line(pod: dict[str, Any]) -> tuple[str, str | None]:
    """One line for a pod, and its last failure reason if any."""
    status = pod.get("status", {})
    restarts = 0
    failure = None
    for cs in status.get("containerStatuses", []) or []:
        restarts += cs.get("restartCount", 0)
        for state_key in ("state", "lastState"):
            terminated = (cs.get(state_key) or {}).get("terminated")
            if terminated and terminated.get("exitCode", 0) != 0:
                failure = (
                    f"container {cs.get('name')} exited {terminated.get('exitCode')} "
                    f"({terminated.get('reason', 'Error')})"
                )
                break
    if status.get("reason") and status.get("phase") == "Failed":
        failure = f"{status['reason']}: {status.get('message', '')}".strip()
    node = pod.get("spec", {}).get("nodeName", "-")
    line = (
        f"  pod {pod['metadata']['name']}: {status.get('phase', 'Unknown')}, restarts {restarts}, node {node}"
    )
    if failure:
        line += f", last failure: {failure}"
    return line, failure


def summarize(cluster: Cluster, obj: dict[str, Any]) -> list[str]:
    """Lines describing one live workload object: its state, restarts, child Jobs, pods and last failure."""
    live = cluster.get(obj)
    if live is None:
        return [f"{describe(obj)}: not found"]
    status = live.get("status", {}) or {}
    namespace = obj["metadata"].get("namespace", "")
    lines: list[str] = []
    failure = None
    kind = obj["kind"]
    if kind == "JobSet":
        state = status.get("terminalState") or ("Suspended" if _condition(live, "Suspended") else "Running")
        lines.append(f"{describe(obj)}: {state}, restarts {status.get('restarts', 0)}")
        failed = _condition(live, "Failed")
        if failed:
            failure = f"{failed.get('reason')}: {failed.get('message', '')}"
        for rjob in status.get("replicatedJobsStatus", []) or []:
            counts = ", ".join(
                f"{key} {rjob.get(key, 0)}" for key in ("ready", "active", "succeeded", "failed", "suspended")
            )
            lines.append(f"  replicatedJob {rjob.get('name')}: {counts}")
        for job in cluster.list(
            "Job", namespace, f"jobset.sigs.k8s.io/jobset-name={obj['metadata']['name']}"
        ):
            js = job.get("status", {})
            job_failed = _condition(job, "Failed")
            state = "Failed" if job_failed else ("Complete" if _condition(job, "Complete") else "Active")
            line = (
                f"  job {job['metadata']['name']}: {state}, active {js.get('active', 0)}, "
                f"succeeded {js.get('succeeded', 0)}, failed {js.get('failed', 0)}"
            )
            if job_failed:
                line += f", reason {job_failed.get('reason')}: {job_failed.get('message', '')}"
                failure = failure or f"job {job['metadata']['name']}: {job_failed.get('reason')}"
            lines.append(line)
    elif kind == "Job":
        lines.append(
            f"{describe(obj)}: active {status.get('active', 0)}, succeeded {status.get('succeeded', 0)}, "
            f"failed {status.get('failed', 0)}, completed indexes {status.get('completedIndexes', '-') or '-'}"
        )
        failed = _condition(live, "Failed")
        if failed:
            failure = f"{failed.get('reason')}: {failed.get('message', '')}"
    elif kind in ("Deployment", "LeaderWorkerSet"):
        lines.append(
            f"{describe(obj)}: ready {status.get('readyReplicas', 0)}/{live.get('spec', {}).get('replicas', 1)}, "
            f"updated {status.get('updatedReplicas', 0)}"
        )
    else:
        lines.append(f"{describe(obj)}: present")
    selector = pod_selector(obj)
    if selector:
        for pod in cluster.list("Pod", namespace, selector):
            line, pod_failure = _pod_line(pod)
            lines.append(line)
            failure = pod_failure or failure
    if failure:
        lines.append(f"  last failure: {failure}")
    return lines


def workload_objects(objects: Iterable[dict[str, Any]], workload: str) -> Iterator[dict[str, Any]]:
    """The objects that belong to ``workload`` itself (not the shared ServiceAccount/PriorityClass)."""
    for obj in objects:
        if obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "shared":
            yield obj
