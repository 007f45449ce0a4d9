"""`sawt deploy apply|status|logs|delete` against a recording stub of the Kubernetes API server.

A real API server (kube-apiserver + etcd + the JobSet controller) cannot run in this sandbox, so these
tests point a kubeconfig at `apiserver_stub`: a small real HTTP server on 127.0.0.1 that records every
request and answers like the API server. The `kubernetes` Python client, its kubeconfig loading and its
HTTP stack are the real ones.
"""

from __future__ import annotations

import pytest

from k8s import render
from k8s.config import load_values
from sawt.cli import main
from tests.deploy import apiserver_stub

JOBSETS = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/sawt/jobsets"


@pytest.fixture
def stub(tmp_path):
    state = apiserver_stub.ApiServerStub()
    server = apiserver_stub.start(state)
    state.kubeconfig = str(apiserver_stub.write_kubeconfig(tmp_path / "kubeconfig", state.url))
    yield state
    server.shutdown()
    server.server_close()


def run(stub, *argv: str) -> int:
    return main(["deploy", *argv, "--kubeconfig", stub.kubeconfig])


def test_apply_train_is_server_side_apply_of_every_rendered_object(stub, capsys):
    assert run(stub, "apply", "train") == 0
    patches = [r for r in stub.requests if r.method == "PATCH"]
    expected = render.render_objects(load_values(), "train")
    assert [r.body for r in patches] == expected
    assert [r.path for r in patches] == [
        "/api/v1/namespaces/sawt/serviceaccounts/sawt",
        "/apis/scheduling.k8s.io/v1/priorityclasses/sawt-training",
        "/api/v1/namespaces/sawt/configmaps/sawt-qwen3-asr-config",
        f"{JOBSETS}/sawt-qwen3-asr",
        "/api/v1/namespaces/sawt/services/sawt-qwen3-asr-metrics",
    ]
    for request in patches:
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query["fieldManager"] == ["sawt-deploy"]
        assert request.query["force"] == ["true"]
        assert request.query["fieldValidation"] == ["Strict"]
    # The JobSet group was discovered before the first JobSet write.
    discovery = [r.path for r in stub.requests if r.method == "GET"]
    assert discovery == ["/apis/jobset.x-k8s.io/v1alpha2"]
    assert "jobset/sawt-qwen3-asr -n sawt applied" in capsys.readouterr().out


def test_apply_without_jobset_crd_fails_clearly_before_writing_the_jobset(stub, capsys):
    del stub.groups["jobset.x-k8s.io/v1alpha2"]
    assert run(stub, "apply", "train") == 2
    err = capsys.readouterr().err
    assert "jobsets.jobset.x-k8s.io CRD" in err and "JobSet controller" in err
    assert not any("jobsets" in r.path for r in stub.writes())


def test_apply_serve_multi_host_needs_lws(stub, capsys):
    del stub.groups["leaderworkerset.x-k8s.io/v1"]
    assert run(stub, "apply", "serve", "--set", "serve.tpu.topology=2x2x4") == 2
    assert "leaderworkersets.leaderworkerset.x-k8s.io CRD" in capsys.readouterr().err


def test_dry_run_contacts_nothing(stub, capsys):
    assert run(stub, "apply", "serve", "--dry-run") == 0
    assert run(stub, "delete", "train", "--dry-run") == 0
    assert stub.requests == []
    out = capsys.readouterr().out
    assert "would apply deployment/sawt-server -n sawt" in out
    assert "would delete jobset/sawt-qwen3-asr -n sawt" in out
    assert "serviceaccount" not in out.split("would delete", 1)[1]  # shared objects stay unless --all


def _seed_failed_run(stub) -> None:
    stub.put(
        f"{JOBSETS}/sawt-qwen3-asr",
        {
            "apiVersion": "jobset.x-k8s.io/v1alpha2",
            "kind": "JobSet",
            "metadata": {"name": "sawt-qwen3-asr", "namespace": "sawt"},
            "status": {
                "restarts": 2,
                "terminalState": "Failed",
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "jobset failed"}
                ],
                "replicatedJobsStatus": [
                    {"name": "slice", "ready": 0, "active": 0, "succeeded": 0, "failed": 1}
                ],
            },
        },
    )
    stub.put(
        "/apis/batch/v1/namespaces/sawt/jobs/sawt-qwen3-asr-slice-0",
        {
            "metadata": {
                "name": "sawt-qwen3-asr-slice-0",
                "labels": {"jobset.sigs.k8s.io/jobset-name": "sawt-qwen3-asr"},
            },
            "status": {
                "active": 0,
                "failed": 1,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "PodFailurePolicy",
                        "message": "Container trainer for pod sawt/x failed with exit code 1",
                    }
                ],
            },
        },
    )
    for index, exit_code in ((0, 1), (1, 0)):
        name = f"sawt-qwen3-asr-slice-0-{index}-abcde"
        terminated = {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}
        stub.put(
            f"/api/v1/namespaces/sawt/pods/{name}",
            {
                "metadata": {
                    "name": name,
                    "namespace": "sawt",
                    "labels": {"jobset.sigs.k8s.io/jobset-name": "sawt-qwen3-asr"},
                },
                "spec": {
                    "nodeName": f"gke-tpu-{index}",
                    "containers": [{"name": "gke-gcsfuse-sidecar"}, {"name": "trainer"}],
                },
                "status": {
                    "phase": "Failed" if exit_code else "Succeeded",
                    "containerStatuses": [
                        {"name": "trainer", "restartCount": 0, "state": {"terminated": terminated}}
                    ],
                },
            },
        )
        stub.logs[name] = f"step 10 loss 1.{index}\nsaved checkpoint\n"


def test_status_summarises_restarts_jobs_pods_and_last_failure(stub, capsys):
    _seed_failed_run(stub)
    assert run(stub, "status", "train") == 0
    out = capsys.readouterr().out
    assert "jobset/sawt-qwen3-asr -n sawt: Failed, restarts 2" in out
    assert "replicatedJob slice: ready 0, active 0, succeeded 0, failed 1" in out
    assert "job sawt-qwen3-asr-slice-0: Failed" in out and "PodFailurePolicy" in out
    assert "pod sawt-qwen3-asr-slice-0-0-abcde: Failed, restarts 0, node gke-tpu-0" in out
    assert "last failure: container trainer exited 1 (Error)" in out
    lists = [r for r in stub.requests if r.path.endswith(("/jobs", "/pods"))]
    assert {r.query["labelSelector"][0] for r in lists} == {"jobset.sigs.k8s.io/jobset-name=sawt-qwen3-asr"}
    assert stub.writes() == []


def test_status_of_a_workload_not_deployed(stub, capsys):
    assert run(stub, "status", "serve") == 0
    assert "deployment/sawt-server -n sawt: not found" in capsys.readouterr().out


def test_logs_prints_every_pod_prefixed(stub, capsys):
    _seed_failed_run(stub)
    assert run(stub, "logs", "train", "--tail", "5") == 0
    out = capsys.readouterr().out.splitlines()
    assert "[sawt-qwen3-asr-slice-0-0-abcde] step 10 loss 1.0" in out
    assert "[sawt-qwen3-asr-slice-0-1-abcde] saved checkpoint" in out
    log_calls = [r for r in stub.requests if r.path.endswith("/log")]
    assert all(r.query["tailLines"] == ["5"] and r.query["container"] == ["trainer"] for r in log_calls)


def test_logs_without_pods_is_a_clear_error(stub, capsys):
    assert run(stub, "logs", "train") == 2
    assert "no pods found for train" in capsys.readouterr().err


def test_delete_removes_the_workload_but_not_shared_objects(stub, capsys):
    assert run(stub, "apply", "train") == 0
    assert run(stub, "delete", "train") == 0
    deletes = [r for r in stub.requests if r.method == "DELETE"]
    assert [r.path for r in deletes] == [
        "/api/v1/namespaces/sawt/services/sawt-qwen3-asr-metrics",
        f"{JOBSETS}/sawt-qwen3-asr",
        "/api/v1/namespaces/sawt/configmaps/sawt-qwen3-asr-config",
    ]
    assert all(r.query["propagationPolicy"] == ["Background"] for r in deletes)
    assert "/api/v1/namespaces/sawt/serviceaccounts/sawt" in stub.objects
    assert run(stub, "delete", "train") == 0
    assert "jobset/sawt-qwen3-asr -n sawt not found" in capsys.readouterr().out


def test_missing_kubeconfig_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["deploy", "status", "train"]) == 2
    err = capsys.readouterr().err
    assert "no usable kubeconfig" in err and "get-credentials" in err


def test_unreachable_api_server_is_a_clear_error(tmp_path, capsys):
    kubeconfig = apiserver_stub.write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:9")
    assert main(["deploy", "apply", "data-convert", "--kubeconfig", str(kubeconfig)]) == 2
    assert "cannot reach the API server at http://127.0.0.1:9" in capsys.readouterr().err
