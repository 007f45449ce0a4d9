"""`sawt deploy doctor`: a preflight of what the rendered manifests assume of the cluster, through its API.

Each check reads the cluster through the `kubernetes` client and says what it found and, when it fails, the
command that fixes it: the JobSet CRD and controller (and LeaderWorkerSet when the server runs multi-host),
the Managed Prometheus or prometheus-operator CRDs of the monitoring backend, the namespace, the service
account and its Workload Identity annotation, the PriorityClass, the GCS FUSE CSI driver, TPU nodes with the
accelerator and topology labels and ``google.com/tpu`` allocatable for every slice the workloads ask for, and
the images' registry. Nothing is written.

The checks run against a real API server on a user's cluster. None can run in this project's sandbox, so the
tests drive them against the recording API-server stub of tests/deploy (a real HTTP server speaking the
endpoints these checks call), seeded with the objects a GKE cluster would hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from k8s import tpu_types
from k8s.config import PACKAGE_DIR, Values
from k8s.lint import has_registry

# The controllers' install locations in their release manifests (kubernetes-sigs/jobset config/default:
# namespace jobset-system, Deployment jobset-controller-manager; kubernetes-sigs/lws: lws-system,
# lws-controller-manager).
JOBSET_CONTROLLER = ("jobset-system", "jobset-controller-manager")
LWS_CONTROLLER = ("lws-system", "lws-controller-manager")
GCSFUSE_DRIVER = "gcsfuse.csi.storage.gke.io"
# The oldest JobSet whose webhook and CRD sawt's manifests were checked against (k8s/schemas/versions.json).
MIN_JOBSET = (0, 10, 1)


@dataclass(frozen=True)
class Check:
    """One preflight check: what it looked at, whether it passed, what it saw, and how to fix a failure."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"[{'ok' if self.ok else 'FAIL'}] {self.name}: {self.detail}"]
        if not self.ok and self.fix:
            out.append(f"       fix: {self.fix}")
        return out


class _Api:
    """GET-only access to the API server, as plain JSON; None for a 404."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.client = client
        self.api_client = api_client

    def get(self, api: str, method: str, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        from k8s.client import DeployError

        fn = getattr(getattr(self.client, api)(self.api_client), method)
        try:
            response = fn(*args, _preload_content=False, **kwargs)
        except ApiException as err:
            if err.status == 404:
                return None
            raise DeployError(f"{method}: {err.status} {err.reason}") from None
        except HTTPError as err:
            host = self.api_client.configuration.host
            raise DeployError(f"cannot reach the API server at {host}: {err}") from None
        data = response.data
        return json.loads(data) if data else {}


def _version(image: str) -> tuple[int, ...] | None:
    match = re.search(r":v?(\d+)\.(\d+)\.(\d+)", image)
    return tuple(int(g) for g in match.groups()) if match else None


def _crd_check(api: _Api, crd: str, version: str, install: str) -> Check:
    found = api.get("ApiextensionsV1Api", "read_custom_resource_definition", crd)
    if found is None:
        return Check(f"CRD {crd}", False, "not installed", install)
    served = [v["name"] for v in found.get("spec", {}).get("versions", []) if v.get("served")]
    if version not in served:
        return Check(f"CRD {crd}", False, f"serves {', '.join(served) or 'nothing'}, not {version}", install)
    return Check(f"CRD {crd}", True, f"serves {version}")


def _controller_check(api: _Api, what: str, where: tuple[str, str], install: str, minimum=None) -> Check:
    namespace, name = where
    deployment = api.get("AppsV1Api", "read_namespaced_deployment", name, namespace)
    if deployment is None:
        return Check(f"{what} controller", False, f"no Deployment {namespace}/{name}", install)
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    image = next((c.get("image", "") for c in containers if c.get("name") == "manager"), "")
    image = image or (containers[0].get("image", "") if containers else "")
    version = _version(image)
    ready = deployment.get("status", {}).get("availableReplicas", 0)
    if minimum and version and version < minimum:
        wanted = "v" + ".".join(map(str, minimum))
        return Check(f"{what} controller", False, f"{image} is older than {wanted}", install)
    if not ready:
        return Check(
            f"{what} controller",
            False,
            f"{image or name} has no available replica",
            f"kubectl -n {namespace} describe deployment {name}",
        )
    return Check(f"{what} controller", True, f"{image} ({ready} available)")


def _node_check(api: _Api, label: str, tpu_slice: tpu_types.TpuSlice, slices: int) -> Check:
    selector = f"{tpu_types.ACCELERATOR_LABEL}={tpu_slice.accelerator},{tpu_types.TOPOLOGY_LABEL}={tpu_slice.topology}"
    nodes = (api.get("CoreV1Api", "list_node", label_selector=selector) or {}).get("items", [])
    wanted = tpu_slice.hosts * slices
    name = f"TPU nodes for {label} ({tpu_slice.name}, {tpu_slice.type} {tpu_slice.topology})"
    fix = (
        f"create {slices} node pool(s) of machine type {tpu_slice.machine_type} with --tpu-topology "
        f"{tpu_slice.topology} ({tpu_slice.hosts} nodes each): gcloud container node-pools create POOL "
        f"--cluster CLUSTER --machine-type {tpu_slice.machine_type} --tpu-topology {tpu_slice.topology} "
        f"--num-nodes {tpu_slice.hosts}"
    )
    if len(nodes) < wanted:
        return Check(name, False, f"{len(nodes)} node(s) labelled {selector}, {wanted} needed", fix)
    short = []
    for node in nodes:
        allocatable = node.get("status", {}).get("allocatable", {}).get(tpu_types.TPU_RESOURCE)
        if str(allocatable) != str(tpu_slice.chips_per_host):
            short.append(f"{node['metadata']['name']} ({tpu_types.TPU_RESOURCE}: {allocatable})")
    if short:
        return Check(
            name,
            False,
            f"{len(short)} node(s) without {tpu_slice.chips_per_host} allocatable chips: {', '.join(short[:4])}",
            "wait for the TPU device plugin on those nodes, or check `kubectl describe node NODE`",
        )
    return Check(name, True, f"{len(nodes)} node(s), {tpu_slice.chips_per_host} chips allocatable each")


def run_checks(api_client: Any, values: Values) -> list[Check]:
    """Every preflight check for ``values`` against the cluster behind ``api_client``."""
    api = _Api(api_client)
    versions = json.loads((PACKAGE_DIR / "schemas" / "versions.json").read_text())
    jobset_release = versions["jobset"]["tag"]
    install_jobset = (
        "kubectl apply --server-side -f https://github.com/kubernetes-sigs/jobset/releases/download/"
        f"{jobset_release}/manifests.yaml"
    )
    serve_slice = values.serve.slice_of(values.tpu)
    checks: list[Check] = [
        _crd_check(api, "jobsets.jobset.x-k8s.io", "v1alpha2", install_jobset),
        _controller_check(api, "JobSet", JOBSET_CONTROLLER, install_jobset, MIN_JOBSET),
    ]
    if serve_slice.multi_host:
        lws_release = versions["lws"]["tag"]
        install_lws = (
            "kubectl apply --server-side -f https://github.com/kubernetes-sigs/lws/releases/download/"
            f"{lws_release}/manifests.yaml"
        )
        checks += [
            _crd_check(api, "leaderworkersets.leaderworkerset.x-k8s.io", "v1", install_lws),
            _controller_check(api, "LeaderWorkerSet", LWS_CONTROLLER, install_lws),
        ]
    if values.monitoring.backend == "gmp":
        checks.append(
            _crd_check(
                api,
                "podmonitorings.monitoring.googleapis.com",
                "v1",
                "gcloud container clusters update CLUSTER --location LOCATION --enable-managed-prometheus",
            )
        )
    else:
        checks.append(
            _crd_check(
                api,
                "podmonitors.monitoring.coreos.com",
                "v1",
                "helm install kube-prometheus-stack prometheus-community/kube-prometheus-stack",
            )
        )
    checks += _identity_checks(api, values)
    driver = api.get("StorageV1Api", "read_csi_driver", GCSFUSE_DRIVER)
    checks.append(
        Check(f"CSI driver {GCSFUSE_DRIVER}", True, "installed")
        if driver is not None
        else Check(
            f"CSI driver {GCSFUSE_DRIVER}",
            False,
            "not installed (every workload mounts its buckets with it)",
            "gcloud container clusters update CLUSTER --location LOCATION --update-addons GcsFuseCsiDriver=ENABLED",
        )
    )
    checks.append(_node_check(api, "train and batch-infer", values.tpu.slice, values.tpu.slices))
    if values.serve.pool == "dedicated":
        checks.append(_node_check(api, "serve", serve_slice, values.serve.replicas))
    checks.append(_image_check(values))
    return checks


def _identity_checks(api: _Api, values: Values) -> list[Check]:
    checks = []
    ns = values.namespace
    namespace = api.get("CoreV1Api", "read_namespace", ns)
    checks.append(
        Check(f"namespace {ns}", True, "exists")
        if namespace is not None
        else Check(f"namespace {ns}", False, "does not exist", f"kubectl create namespace {ns}")
    )
    sa = values.service_account
    account = api.get("CoreV1Api", "read_namespaced_service_account", sa.name, ns) if namespace else None
    annotation = "iam.gke.io/gcp-service-account"
    if account is None and not sa.create:
        checks.append(
            Check(
                f"service account {ns}/{sa.name}",
                False,
                "does not exist and service_account.create is false",
                f"kubectl -n {ns} create serviceaccount {sa.name}, or set service_account.create=true",
            )
        )
    elif account is None:
        checks.append(Check(f"service account {ns}/{sa.name}", True, "will be created by apply"))
    else:
        found = account.get("metadata", {}).get("annotations", {}).get(annotation, "")
        wanted = sa.gcp_service_account
        if wanted and found != wanted and not sa.create:
            checks.append(
                Check(
                    f"service account {ns}/{sa.name}",
                    False,
                    f"{annotation} is {found or 'unset'}, values say {wanted}",
                    f"kubectl -n {ns} annotate serviceaccount {sa.name} {annotation}={wanted} --overwrite",
                )
            )
        else:
            checks.append(
                Check(f"service account {ns}/{sa.name}", True, f"exists ({annotation}: {found or 'unset'})")
            )
    if sa.gcp_service_account:
        checks.append(
            Check(
                "Workload Identity",
                True,
                f"{sa.name} acts as {sa.gcp_service_account} (it needs roles/storage.objectUser on the buckets "
                "and roles/iam.workloadIdentityUser for the KSA: not visible through the Kubernetes API)",
            )
        )
    else:
        checks.append(
            Check(
                "Workload Identity",
                False,
                "service_account.gcp_service_account is empty: the pods reach the buckets only if the KSA "
                "itself was granted access (principal://…/subject/ns/NAMESPACE/sa/NAME)",
                "set service_account.gcp_service_account=NAME@PROJECT.iam.gserviceaccount.com, or grant the KSA "
                "roles/storage.objectUser on the buckets and ignore this",
            )
        )
    pc = values.priority
    found_pc = api.get("SchedulingV1Api", "read_priority_class", pc.class_name)
    if found_pc is None and not pc.create:
        checks.append(
            Check(
                f"PriorityClass {pc.class_name}",
                False,
                "does not exist and priority.create is false",
                f"kubectl create priorityclass {pc.class_name} --value {pc.value}, or set priority.create=true",
            )
        )
    else:
        checks.append(
            Check(
                f"PriorityClass {pc.class_name}",
                True,
                f"value {found_pc['value']}" if found_pc else "will be created by apply",
            )
        )
    return checks


def _image_check(values: Values) -> Check:
    bare = [image for image in (values.images.trainer, values.images.server) if not has_registry(image)]
    if bare:
        return Check(
            "images",
            False,
            f"{', '.join(bare)} name no registry (GKE would pull them from Docker Hub)",
            "set images.trainer/images.server=REGION-docker.pkg.dev/PROJECT/REPO/NAME:TAG (skaffold --default-repo "
            "does this for its own renders)",
        )
    return Check("images", True, f"{values.images.trainer}, {values.images.server}")


def report(checks: list[Check], write: Callable[[str], None] = print) -> int:
    """Prints every check (with its fix when it failed); returns the exit code (1 when any failed)."""
    for check in checks:
        for line in check.lines():
            write(line)
    failed = sum(not c.ok for c in checks)
    write(
        f"{len(checks) - failed} of {len(checks)} checks passed"
        + (f"; fix the {failed} above" if failed else "")
    )
    return 1 if failed else 0
