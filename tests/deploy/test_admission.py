"""The admission rules (k8s/admission.py): each one rejects a bad value in an otherwise good rendered object,
the default renders pass them all, and --validate applies them with the vendored schemas."""

from __future__ import annotations

import copy
import hashlib

import pytest

from k8s import admission, lint, render
from k8s.config import PACKAGE_DIR, load_values


def _objects(workload: str, *overrides: str) -> list[dict]:
    return render.render_objects(load_values(None, list(overrides)), workload)


def _one(objects: list[dict], kind: str) -> dict:
    return next(o for o in objects if o["kind"] == kind)


def _train_pod(jobset: dict) -> dict:
    return jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]


def _set(path: str, value):
    """A mutation that sets a ':'-separated path (list indexes as numbers) in the object."""

    def mutate(obj: dict) -> None:
        *parents, last = path.split(":")
        node = obj
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[int(last) if last.isdigit() else last] = value

    return mutate


POD = "spec:replicatedJobs:0:template:spec:template"
JOB = "spec:replicatedJobs:0:template:spec"

# rule id -> (workload, kind, mutation that breaks exactly that rule)
CASES = {
    "meta.name": ("serve", "Service", _set("metadata:name", "1-server")),
    "meta.labels": ("train", "JobSet", _set(f"{POD}:metadata:labels:app.kubernetes.io/version", "v" * 64)),
    "pod.containers": ("train", "JobSet", _set(f"{POD}:spec:containers:0:name", "Trainer_1")),
    "pod.ports": ("train", "JobSet", _set(f"{POD}:spec:containers:0:ports:0:name", "trainer-metrics-port")),
    "pod.env": ("train", "JobSet", _set(f"{POD}:spec:containers:0:env:0:name", "1PYTHONUNBUFFERED")),
    "pod.volumes": ("train", "JobSet", _set(f"{POD}:spec:containers:0:volumeMounts:0:name", "nothing")),
    "pod.resources": (
        "train",
        "JobSet",
        _set(f"{POD}:spec:containers:0:resources:requests:google.com/tpu", "3"),
    ),
    "job.restart_policy": ("train", "JobSet", _set(f"{POD}:spec:restartPolicy", "OnFailure")),
    "job.pod_failure_policy": (
        "train",
        "JobSet",
        _set(f"{JOB}:podFailurePolicy:rules:0:onExitCodes:values", [143, 42]),
    ),
    "job.indexed": ("data-convert", "Job", _set("spec:completionMode", "NonIndexed")),
    "job.pod_hostname": ("data-convert", "Job", _set("metadata:name", "d" * 62)),
    "jobset.failure_rule_names": (
        "train",
        "JobSet",
        _set("spec:failurePolicy:rules:0:name", "fail-on-error"),
    ),
    "jobset.failure_rule_reasons": (
        "train",
        "JobSet",
        _set("spec:failurePolicy:rules:0:onJobFailureReasons", ["PodFailed"]),
    ),
    "jobset.feature_gates": ("train", "JobSet", _set("spec:failurePolicy:restartStrategy", "InPlaceRestart")),
    "jobset.generated_names": ("train", "JobSet", _set("metadata:name", "sawt-" + "q" * 48)),
    "gke.tpu_env_injection": ("train", "JobSet", _set("spec:network:enableDNSHostnames", False)),
    "lws.group": ("serve", "LeaderWorkerSet", _set("spec:leaderWorkerTemplate:size", 0)),
    "apps.deployment": ("serve", "Deployment", _set("spec:selector:matchLabels:app.kubernetes.io/name", "x")),
    "core.service": ("serve", "Service", _set("spec:ports", [{"port": 1}, {"port": 2}])),
    "core.config_map": ("train", "ConfigMap", _set("data", {"config yaml": "x"})),
    "scheduling.priority_class": ("train", "PriorityClass", _set("value", 2_000_000_000)),
}
# The LWS case needs the multi-host server (LeaderWorkerSet); every other case uses the default values.
LWS_OVERRIDES = ("serve.tpu.topology=2x2x4",)


def test_every_rule_has_a_rejecting_case():
    assert sorted(CASES) == sorted(admission.RULES)
    for r in admission.RULES.values():
        assert r.source and r.source.split()[0] in (
            "CORE",
            "BATCH",
            "APPS",
            "JOBSET",
            "LWS",
            "GKE:",
            "apimachinery",
            "kubernetes",
        ), r.id


def test_default_renders_pass_every_admission_rule():
    for workload in render.WORKLOADS:
        assert admission.admission_problems(_objects(workload)) == [], workload
    assert admission.admission_problems(_objects("serve", *LWS_OVERRIDES)) == []


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_rejects_a_bad_value(rule_id):
    workload, kind, mutate = CASES[rule_id]
    overrides = LWS_OVERRIDES if kind == "LeaderWorkerSet" else ()
    good = _one(_objects(workload, *overrides), kind)
    assert not [p for p in admission.admission_problems([good]) if f"[{rule_id}]" in p]
    bad = copy.deepcopy(good)
    mutate(bad)
    problems = admission.admission_problems([bad])
    assert any(f"[{rule_id}]" in p for p in problems), problems


def test_the_webhooks_rule_name_pattern_as_in_its_source():
    # jobset pkg/webhooks/jobset_webhook.go ruleNameFmt; the hyphenated names sawt once rendered fail it.
    good = ["fail_on_application_error", "A", "a:b,c_", "rule1"]
    bad = ["fail-on-application-error", "1rule", "_x", "a:", "", "x" * 129]
    assert all(admission.FAILURE_RULE_NAME.match(n) and len(n) <= 128 for n in good)
    assert not any(admission.FAILURE_RULE_NAME.match(n) and 1 <= len(n) <= 128 for n in bad)


def test_validate_applies_schemas_and_admission(schemas):
    objects = _objects("train")
    assert lint.lint(objects, schemas) == []
    _one(objects, "JobSet")["spec"]["failurePolicy"]["rules"][1]["name"] = "restart-on-sigterm"
    problems = lint.lint(objects, schemas)
    assert problems and all("[jobset.failure_rule_names]" in p for p in problems), problems


def test_exit_codes_stay_ordered_for_any_restart_code():
    for code in (1, 17, 42, 127):
        jobset = _one(_objects("train", f"train.restart_exit_code={code}"), "JobSet")
        values = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"]["rules"][0]
        values = values["onExitCodes"]["values"]
        assert values == sorted(set(values)) and code in values and len(values) <= 255


# The vendored schemas (k8s/schemas/README.md lists these hashes).
SCHEMA_HASHES = {
    "jobset/jobset.x-k8s.io_jobsets.yaml": "d022b87624512cf0",
    "jobset-v0.10.1/jobset.x-k8s.io_jobsets.yaml": "dd2d5dbb3186ea36",
    "lws/leaderworkerset.x-k8s.io_leaderworkersets.yaml": "c5dcad8ed943e495",
    "gmp/monitoring.googleapis.com_podmonitorings.yaml": "e14f6b033dae7089",
    "gmp/monitoring.googleapis.com_clusterpodmonitorings.yaml": "4f5ea8425338b4c5",
    "gmp/monitoring.googleapis.com_rules.yaml": "e2759cd100c2d29c",
    "prometheus-operator/monitoring.coreos.com_servicemonitors.yaml": "a99047972c9dd767",
    "prometheus-operator/monitoring.coreos.com_podmonitors.yaml": "45a93443daa687d3",
    "prometheus-operator/monitoring.coreos.com_prometheusrules.yaml": "78be98554b9c8506",
    "skaffold/skaffold-v4beta14.json": "7c29a621995d2c61",
}


def test_schemas_ship_with_the_package_verbatim_with_licences(schemas):
    assert schemas == PACKAGE_DIR / "schemas" and schemas == lint.SCHEMAS_DIR
    for name, digest in SCHEMA_HASHES.items():
        assert hashlib.sha256((schemas / name).read_bytes()).hexdigest()[:16] == digest, name
        assert "Apache License" in ((schemas / name).parent / "LICENSE").read_text()
    assert (schemas / "versions.json").is_file() and (schemas / "README.md").is_file()
