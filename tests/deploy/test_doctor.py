"""`sawt deploy doctor` against the recording API-server stub, seeded as a healthy GKE cluster would answer.

A real API server cannot run in this sandbox (see tests/deploy/test_client.py); the stub serves the GETs
the doctor makes, and every check is shown failing with its fix by removing what it looks for.
"""

from __future__ import annotations

import pytest

from sawt.cli import main
from tests.deploy import apiserver_stub

CRDS = apiserver_stub.CRDS


@pytest.fixture
def cluster(tmp_path):
    """The healthy GKE cluster of apiserver_stub.healthy_gke(), served."""
    state = apiserver_stub.healthy_gke()
    server = apiserver_stub.start(state)
    state.kubeconfig = str(apiserver_stub.write_kubeconfig(tmp_path / "kubeconfig", state.url))
    yield state
    server.shutdown()
    server.server_close()


def doctor(cluster, *argv: str) -> int:
    return main(["deploy", "doctor", *argv, "--kubeconfig", cluster.kubeconfig])


def test_healthy_cluster_passes_every_check_read_only(cluster, capsys):
    assert doctor(cluster) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "11 of 11 checks passed" in out
    assert "[ok] JobSet controller: registry.k8s.io/jobset/jobset:v0.10.1" in out
    assert "[ok] TPU nodes for train and batch-infer (v4-32, v4 2x2x4): 4 node(s)" in out
    assert not cluster.writes()  # a preflight writes nothing
    nodes = [r for r in cluster.requests if r.path == "/api/v1/nodes"]
    assert {r.query["labelSelector"][0] for r in nodes} == {
        "cloud.google.com/gke-tpu-accelerator=tpu-v4-podslice,cloud.google.com/gke-tpu-topology=2x2x4",
        "cloud.google.com/gke-tpu-accelerator=tpu-v4-podslice,cloud.google.com/gke-tpu-topology=2x2x1",
    }


@pytest.mark.parametrize(
    ("break_it", "argv", "expected", "fix"),
    [
        (lambda s: s.objects.pop(f"{CRDS}/jobsets.jobset.x-k8s.io"), (), "CRD jobsets.jobset.x-k8s.io: not installed", "kubectl apply --server-side"),
        (
            lambda s: s.put(
                "/apis/apps/v1/namespaces/jobset-system/deployments/jobset-controller-manager",
                apiserver_stub.jobset_controller("registry.k8s.io/jobset/jobset:v0.7.0"),
            ),
            (),
            "older than v0.10.1",
            "jobset/releases/download/v0.12.0",
        ),
        (lambda s: s.objects.pop("/api/v1/namespaces/sawt"), (), "namespace sawt: does not exist", "kubectl create namespace sawt"),
        (lambda s: None, ("--set", "service_account.create=false"), "does not exist and service_account.create is false", "create serviceaccount sawt"),
        (lambda s: None, ("--set", "priority.create=false"), "PriorityClass sawt-training: does not exist", "kubectl create priorityclass"),
        (lambda s: None, ("--set", "service_account.gcp_service_account="), "Workload Identity: service_account.gcp_service_account is empty", "roles/storage.objectUser"),
        (lambda s: s.objects.pop("/apis/storage.k8s.io/v1/csidrivers/gcsfuse.csi.storage.gke.io"), (), "not installed", "GcsFuseCsiDriver=ENABLED"),
        (lambda s: s.objects.pop("/api/v1/nodes/gke-v4-32-3"), (), "3 node(s) labelled", "--tpu-topology 2x2x4 --num-nodes 4"),
        (lambda s: s.put("/api/v1/nodes/gke-v4-32-1", apiserver_stub.tpu_node("gke-v4-32-1", "2x2x4", chips="0")), (), "without 4 allocatable chips", "device plugin"),
        (lambda s: s.objects.pop("/api/v1/nodes/gke-v4-8-0"), (), "TPU nodes for serve", "--tpu-topology 2x2x1"),
        (lambda s: None, ("--set", "images.server=sawt-server"), "images: sawt-server name no registry", "REGION-docker.pkg.dev"),
        (lambda s: None, ("--set", "serve.pool=training"), "CRD leaderworkersets.leaderworkerset.x-k8s.io: not installed", "lws/releases"),
        (lambda s: None, ("--set", "monitoring.backend=prometheus-operator"), "CRD podmonitors.monitoring.coreos.com", "kube-prometheus-stack"),
    ],
)  # fmt: skip
def test_each_failed_check_says_how_to_fix_it_and_exits_1(cluster, capsys, break_it, argv, expected, fix):
    break_it(cluster)
    assert doctor(cluster, *argv) == 1
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if line.startswith("[FAIL]")]
    assert any(expected in line for line in failing), out
    index = out.splitlines().index(next(line for line in failing if expected in line))
    assert fix in out.splitlines()[index + 1] and out.splitlines()[index + 1].strip().startswith("fix:")


def test_unreachable_api_server_is_a_usage_error(tmp_path, capsys):
    kubeconfig = apiserver_stub.write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:9")
    assert main(["deploy", "doctor", "--kubeconfig", str(kubeconfig)]) == 2
    assert "cannot reach the API server" in capsys.readouterr().err
