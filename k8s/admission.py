"""What a real cluster's admission enforces beyond the CRD and OpenAPI schemas, read from the sources.

A manifest can pass every strict schema and still be refused: the JobSet validating webhook checks rule
names with a regular expression that the CRD carries only in a description; the API server validates the
Jobs that the JobSet controller creates from our template only when it creates them (the JobSet is then
admitted but never starts); names the controllers generate from ours must be DNS labels. Each rule below
names its source: repository, path and the version it was read at. The shared building blocks are
Kubernetes' own name and label validators (kubernetes/apimachinery `pkg/util/validation/validation.go`).

Sources (versions read):
- JOBSET: kubernetes-sigs/jobset `pkg/webhooks/jobset_webhook.go`, `pkg/controllers/jobset_controller.go`,
  `pkg/features/features.go` @ v0.10.1 (what xpk installs) and v0.12.0; the rules used here are the same in
  both.
- BATCH: kubernetes/kubernetes `pkg/apis/batch/validation/validation.go` (Kubernetes 1.31+, which GKE's
  channels run), the Job validation that applies to our Jobs and to the JobSet's child Jobs.
- CORE: kubernetes/kubernetes `pkg/apis/core/validation/validation.go` (pod specs, Services, ConfigMaps) and
  kubernetes/apimachinery `pkg/apis/meta/v1/validation` + `pkg/api/validation/objectmeta.go` (labels,
  annotations, names).
- APPS: kubernetes/kubernetes `pkg/apis/apps/validation/validation.go` (Deployments).
- LWS: kubernetes-sigs/lws `pkg/webhooks/leaderworkerset_webhook.go` @ v0.10.0.
- GKE: the TPU webhook injects TPU_WORKER_ID and TPU_WORKER_HOSTNAMES only "when a Job is created with the
  completionMode: Indexed, subdomain, parallelism > 1, and requesting google.com/tpu"
  (GKE docs, as quoted in shared docs gke-tpu.md §1(a)-8).

`admission_problems(objects)` returns one message per violation, naming the rule id, the object and the
field; `RULES` lists every rule with its source (tests/deploy/test_admission.py rejects a bad value for each).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from k8s import tpu_types

# --------------------------------------------------------------------------------------------------------
# Kubernetes' validators (kubernetes/apimachinery pkg/util/validation/validation.go)

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ENV_VAR_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_PORT_NAME = re.compile(r"^[-a-z0-9]+$")
_LETTER = re.compile(r"[a-z]")


def dns1123_label(value: str) -> bool:
    """IsDNS1123Label: at most 63 lowercase alphanumerics or '-', alphanumeric at both ends."""
    return len(value) <= 63 and bool(_DNS1123_LABEL.match(value))


def dns1035_label(value: str) -> bool:
    """IsDNS1035Label: a DNS-1123 label that starts with a letter."""
    return len(value) <= 63 and bool(_DNS1035_LABEL.match(value))


def dns1123_subdomain(value: str) -> bool:
    """IsDNS1123Subdomain: at most 253 characters of dot-separated DNS-1123 labels."""
    return 0 < len(value) <= 253 and all(_DNS1123_LABEL.match(part) for part in value.split("."))


def qualified_name(value: str) -> bool:
    """IsQualifiedName (label and annotation keys): ``[prefix/]name``, prefix a DNS subdomain, name <= 63."""
    prefix, _, name = value.rpartition("/")
    if "/" in value and not dns1123_subdomain(prefix):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def label_value(value: str) -> bool:
    """IsValidLabelValue: at most 63 characters, alphanumeric at both ends, '-', '_', '.' inside."""
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def port_name(value: str) -> bool:
    """IsValidPortName (IANA_SVC_NAME): 1-15 of [-a-z0-9], a letter, no '-' at either end, no '--'."""
    return (
        0 < len(value) <= 15
        and bool(_PORT_NAME.match(value))
        and bool(_LETTER.search(value))
        and not value.startswith("-")
        and not value.endswith("-")
        and "--" not in value
    )


# --------------------------------------------------------------------------------------------------------
# The rules


@dataclass(frozen=True)
class Rule:
    """One admission rule: an id for messages and tests, its source, and the check."""

    id: str
    source: str
    check: Callable[[dict[str, Any]], Iterator[str]]


RULES: dict[str, Rule] = {}


def rule(rule_id: str, source: str):
    def register(fn: Callable[[dict[str, Any]], Iterator[str]]):
        RULES[rule_id] = Rule(rule_id, source, fn)
        return fn

    return register


def _kind(obj: dict[str, Any]) -> str:
    return str(obj.get("kind", ""))


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every pod template inside a workload object."""
    spec = obj.get("spec") or {}
    if _kind(obj) in ("Deployment", "Job"):
        yield "spec.template", spec.get("template") or {}
    elif _kind(obj) == "JobSet":
        for i, rjob in enumerate(spec.get("replicatedJobs") or []):
            template = ((rjob.get("template") or {}).get("spec") or {}).get("template") or {}
            yield f"spec.replicatedJobs[{i}].template.spec.template", template
    elif _kind(obj) == "LeaderWorkerSet":
        lwt = spec.get("leaderWorkerTemplate") or {}
        for key in ("leaderTemplate", "workerTemplate"):
            if key in lwt:
                yield f"spec.leaderWorkerTemplate.{key}", lwt[key]


def _job_specs(obj: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, the Job's name or longest generated name, Job spec) of a Job or of a JobSet's child Jobs."""
    if _kind(obj) == "Job":
        yield "spec", _meta(obj).get("name", ""), obj.get("spec") or {}
    elif _kind(obj) == "JobSet":
        name = _meta(obj).get("name", "")
        for i, rjob in enumerate((obj.get("spec") or {}).get("replicatedJobs") or []):
            # JOBSET jobset_controller.go constructJob / placement.GenJobName: <jobset>-<rjob>-<index>.
            longest = f"{name}-{rjob.get('name', '')}-{int(rjob.get('replicas', 1)) - 1}"
            yield (
                f"spec.replicatedJobs[{i}].template.spec",
                longest,
                (rjob.get("template") or {}).get("spec") or {},
            )


# ---- object metadata ------------------------------------------------------------------------------------

# CORE: ValidateServiceName is NameIsDNS1035Label; LWS: the LWS name names its headless Service, so it is
# validated as a DNS-1035 label too. Every other kind we render takes a DNS-1123 subdomain.
_DNS1035_NAMED = {"Service", "LeaderWorkerSet"}


@rule("meta.name", "CORE objectmeta.go ValidateObjectMeta + per-kind name func; LWS webhook generalValidate")
def _object_name(obj: dict[str, Any]) -> Iterator[str]:
    name = str(_meta(obj).get("name", ""))
    if _kind(obj) in _DNS1035_NAMED:
        if not dns1035_label(name):
            yield f"metadata.name {name!r} must be a DNS-1035 label (<= 63 of [a-z0-9-], starting with a letter)"
    elif not dns1123_subdomain(name):
        yield f"metadata.name {name!r} must be a DNS-1123 subdomain"
    namespace = _meta(obj).get("namespace")
    if namespace is not None and not dns1123_label(str(namespace)):
        yield f"metadata.namespace {namespace!r} must be a DNS-1123 label"


def _labels_and_annotations(where: str, meta: dict[str, Any]) -> Iterator[str]:
    for key, value in (meta.get("labels") or {}).items():
        if not qualified_name(str(key)):
            yield f"{where}.labels: key {key!r} is not a qualified name"
        if not isinstance(value, str) or not label_value(value):
            yield f"{where}.labels[{key}]: {value!r} is not a valid label value (<= 63, alphanumeric ends)"
    annotations = meta.get("annotations") or {}
    for key in annotations:
        if not qualified_name(str(key).lower()):
            yield f"{where}.annotations: key {key!r} is not a qualified name"
    # apimachinery ValidateAnnotationsSize: TotalAnnotationSizeLimitB = 256 KiB (keys + values).
    size = sum(len(str(k)) + len(str(v)) for k, v in annotations.items())
    if size > 256 * 1024:
        yield f"{where}.annotations: {size} bytes in total, more than 256 KiB"


@rule("meta.labels", "apimachinery pkg/apis/meta/v1/validation ValidateLabels; CORE ValidateAnnotations")
def _labels(obj: dict[str, Any]) -> Iterator[str]:
    yield from _labels_and_annotations("metadata", _meta(obj))
    for where, template in _pod_templates(obj):
        yield from _labels_and_annotations(f"{where}.metadata", template.get("metadata") or {})
    if _kind(obj) == "JobSet":
        for i, rjob in enumerate((obj.get("spec") or {}).get("replicatedJobs") or []):
            meta = (rjob.get("template") or {}).get("metadata") or {}
            yield from _labels_and_annotations(f"spec.replicatedJobs[{i}].template.metadata", meta)


# ---- pod specs -----------------------------------------------------------------------------------------


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


@rule("pod.containers", "CORE validateContainers: names are unique DNS-1123 labels")
def _container_names(obj: dict[str, Any]) -> Iterator[str]:
    for where, template in _pod_templates(obj):
        seen: set[str] = set()
        for c in _containers(template.get("spec") or {}):
            name = str(c.get("name", ""))
            if not dns1123_label(name):
                yield f"{where}: container name {name!r} must be a DNS-1123 label"
            if name in seen:
                yield f"{where}: container name {name!r} used twice"
            seen.add(name)


@rule("pod.ports", "CORE validateContainerPorts: IANA_SVC_NAME names, unique per pod; numbers 1-65535")
def _ports(obj: dict[str, Any]) -> Iterator[str]:
    for where, template in _pod_templates(obj):
        names: set[str] = set()
        for c in _containers(template.get("spec") or {}):
            for port in c.get("ports") or []:
                number = port.get("containerPort")
                if not isinstance(number, int) or not 0 < number < 65536:
                    yield f"{where}: container {c.get('name')} containerPort {number!r} not in 1-65535"
                name = port.get("name")
                if name is None:
                    continue
                if not port_name(str(name)):
                    yield f"{where}: port name {name!r} is not an IANA_SVC_NAME (<= 15 of [a-z0-9-], a letter)"
                if name in names:
                    yield f"{where}: port name {name!r} used twice"
                names.add(str(name))


@rule("pod.env", "CORE validateEnv: IsEnvVarName (letters, digits, '-', '.', '_'; not a digit first)")
def _env(obj: dict[str, Any]) -> Iterator[str]:
    for where, template in _pod_templates(obj):
        for c in _containers(template.get("spec") or {}):
            for var in c.get("env") or []:
                if not _ENV_VAR_NAME.match(str(var.get("name", ""))):
                    yield f"{where}: container {c.get('name')} env name {var.get('name')!r} is not valid"


@rule("pod.volumes", "CORE ValidateVolumes/ValidateVolumeMounts: unique DNS-1123 names; mounts name a volume")
def _volumes(obj: dict[str, Any]) -> Iterator[str]:
    for where, template in _pod_templates(obj):
        spec = template.get("spec") or {}
        names: set[str] = set()
        for volume in spec.get("volumes") or []:
            name = str(volume.get("name", ""))
            if not dns1123_label(name):
                yield f"{where}: volume name {name!r} must be a DNS-1123 label"
            if name in names:
                yield f"{where}: volume name {name!r} used twice"
            names.add(name)
        for c in _containers(spec):
            paths: set[str] = set()
            for mount in c.get("volumeMounts") or []:
                if mount.get("name") not in names:
                    yield f"{where}: container {c.get('name')} mounts {mount.get('name')!r}, which is no volume"
                if mount.get("mountPath") in paths:
                    yield f"{where}: container {c.get('name')} mounts {mount.get('mountPath')} twice"
                paths.add(mount.get("mountPath"))


def _is_extended(resource: str) -> bool:
    # CORE IsExtendedResourceName: a domain-prefixed name outside kubernetes.io (e.g. google.com/tpu).
    return "/" in resource and not resource.split("/")[0].endswith("kubernetes.io")


@rule(
    "pod.resources",
    "CORE ValidateResourceRequirements: extended resources are integers with requests == limits; requests <= "
    "limits",
)
def _resources(obj: dict[str, Any]) -> Iterator[str]:
    from k8s.config import quantity_value

    for where, template in _pod_templates(obj):
        for c in _containers(template.get("spec") or {}):
            resources = c.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            for name in set(requests) | set(limits):
                request, limit = requests.get(name), limits.get(name)
                if _is_extended(name):
                    for value in (request, limit):
                        if value is not None and not re.fullmatch(r"[0-9]+", str(value)):
                            yield f"{where}: container {c.get('name')} {name}: {value!r} must be an integer"
                    if request is not None and limit is None:
                        yield f"{where}: container {c.get('name')} {name}: an extended resource needs a limit"
                    if request is not None and limit is not None and str(request) != str(limit):
                        yield f"{where}: container {c.get('name')} {name}: requests must equal limits"
                elif (
                    request is not None
                    and limit is not None
                    and quantity_value(str(request)) > quantity_value(str(limit))
                ):
                    yield f"{where}: container {c.get('name')} {name}: request {request} above limit {limit}"


# ---- Jobs (ours, and the ones the JobSet controller makes from our template) ------------------------------

_POD_FAILURE_ACTIONS = ("Count", "FailIndex", "FailJob", "Ignore")


@rule(
    "job.restart_policy",
    "BATCH validateJobSpec: restartPolicy OnFailure or Never; Never with podFailurePolicy",
)
def _job_restart_policy(obj: dict[str, Any]) -> Iterator[str]:
    for where, _, spec in _job_specs(obj):
        # JOBSET webhook Default: an empty restartPolicy in a replicated job becomes OnFailure.
        default = "OnFailure" if _kind(obj) == "JobSet" else ""
        policy = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy") or default
        if policy not in ("OnFailure", "Never"):
            yield f"{where}.template.spec.restartPolicy {policy!r}: a Job's pods must be OnFailure or Never"
        elif spec.get("podFailurePolicy") is not None and policy != "Never":
            yield f"{where}.template.spec.restartPolicy {policy!r}: podFailurePolicy needs Never"


@rule(
    "job.pod_failure_policy",
    "BATCH validatePodFailurePolicy(Rule|RuleOnExitCodes): <= 20 rules; action Count|FailIndex|FailJob|Ignore "
    "(FailIndex needs backoffLimitPerIndex); exactly one of onExitCodes/onPodConditions; operator In|NotIn; "
    "containerName a container of the pod; 1-255 values, unique, ascending, no 0 with In",
)
def _pod_failure_policy(obj: dict[str, Any]) -> Iterator[str]:
    for where, _, spec in _job_specs(obj):
        policy = spec.get("podFailurePolicy")
        if policy is None:
            continue
        rules = policy.get("rules") or []
        if len(rules) > 20:
            yield f"{where}.podFailurePolicy: {len(rules)} rules, at most 20"
        containers = {c.get("name") for c in _containers((spec.get("template") or {}).get("spec") or {})}
        for i, r in enumerate(rules):
            at = f"{where}.podFailurePolicy.rules[{i}]"
            action = r.get("action")
            if action not in _POD_FAILURE_ACTIONS:
                yield f"{at}.action {action!r}: one of {', '.join(_POD_FAILURE_ACTIONS)}"
            if action == "FailIndex" and spec.get("backoffLimitPerIndex") is None:
                yield f"{at}.action FailIndex requires backoffLimitPerIndex"
            exit_codes, conditions = r.get("onExitCodes"), r.get("onPodConditions")
            if (exit_codes is None) == (not conditions):
                yield f"{at}: exactly one of onExitCodes and onPodConditions"
            if exit_codes is None:
                continue
            operator = exit_codes.get("operator")
            if operator not in ("In", "NotIn"):
                yield f"{at}.onExitCodes.operator {operator!r}: In or NotIn"
            name = exit_codes.get("containerName")
            if name is not None and name not in containers:
                yield f"{at}.onExitCodes.containerName {name!r} is not a container of the pod"
            values = list(exit_codes.get("values") or [])
            if not 1 <= len(values) <= 255:
                yield f"{at}.onExitCodes.values: {len(values)} values, 1 to 255 allowed"
            if len(set(values)) != len(values):
                yield f"{at}.onExitCodes.values: duplicates"
            if values != sorted(values):
                yield f"{at}.onExitCodes.values must be ordered"
            if operator == "In" and 0 in values:
                yield f"{at}.onExitCodes.values must not contain 0 with the In operator"


@rule(
    "job.indexed",
    "BATCH validateJobSpec: Indexed needs completions and parallelism <= 100000; backoffLimitPerIndex and "
    "maxFailedIndexes need Indexed; maxFailedIndexes needs backoffLimitPerIndex and <= completions; "
    "non-negative counts; podReplacementPolicy Failed with podFailurePolicy",
)
def _job_indexed(obj: dict[str, Any]) -> Iterator[str]:
    for where, _, spec in _job_specs(obj):
        # JOBSET webhook Default: completionMode defaults to Indexed in a replicated job.
        mode = spec.get("completionMode") or ("Indexed" if _kind(obj) == "JobSet" else "NonIndexed")
        for key in ("parallelism", "completions", "backoffLimit", "backoffLimitPerIndex", "maxFailedIndexes"):
            value = spec.get(key)
            if value is not None and (not isinstance(value, int) or value < 0):
                yield f"{where}.{key} {value!r} must be a non-negative integer"
        if mode == "Indexed":
            if spec.get("completions") is None:
                yield f"{where}.completions is required when completionMode is Indexed"
            if (spec.get("parallelism") or 0) > 100_000:
                yield f"{where}.parallelism above 100000 for an Indexed Job"
            limit = spec.get("maxFailedIndexes")
            if limit is not None and spec.get("completions") is not None and limit > spec["completions"]:
                yield f"{where}.maxFailedIndexes must be <= completions"
        else:
            for key in ("backoffLimitPerIndex", "maxFailedIndexes"):
                if spec.get(key) is not None:
                    yield f"{where}.{key} requires completionMode Indexed"
        if spec.get("maxFailedIndexes") is not None and spec.get("backoffLimitPerIndex") is None:
            yield f"{where}.backoffLimitPerIndex is required when maxFailedIndexes is set"
        replacement = spec.get("podReplacementPolicy")
        if spec.get("podFailurePolicy") is not None and replacement not in (None, "Failed"):
            yield f"{where}.podReplacementPolicy {replacement!r}: only Failed with a podFailurePolicy"


@rule(
    "job.pod_hostname",
    "BATCH ValidateJob: an Indexed Job's pods are named <job>-<index>, which must be a DNS-1123 label",
)
def _job_hostname(obj: dict[str, Any]) -> Iterator[str]:
    for where, job_name, spec in _job_specs(obj):
        mode = spec.get("completionMode") or ("Indexed" if _kind(obj) == "JobSet" else "NonIndexed")
        completions = spec.get("completions")
        if mode == "Indexed" and isinstance(completions, int) and completions > 0:
            hostname = f"{job_name}-{completions - 1}"
            if not dns1123_label(hostname):
                yield f"{where}: pod hostnames like {hostname!r} are not DNS-1123 labels (<= 63 characters)"


# ---- JobSet webhook -------------------------------------------------------------------------------------

# JOBSET jobset_webhook.go: validOnJobFailureReasons (the Job condition reasons batch/v1 defines).
JOB_FAILURE_REASONS = (
    "BackoffLimitExceeded",
    "DeadlineExceeded",
    "FailedIndexes",
    "MaxFailedIndexesExceeded",
    "PodFailurePolicy",
)
# JOBSET jobset_webhook.go: ruleNameFmt, minRuleNameLength 1, maxRuleNameLength 128.
FAILURE_RULE_NAME = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


@rule(
    "jobset.failure_rule_names",
    "JOBSET jobset_webhook.go validateFailurePolicy: names 1-128 characters matching "
    "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$ (no '-'), unique",
)
def _failure_rule_names(obj: dict[str, Any]) -> Iterator[str]:
    if _kind(obj) != "JobSet":
        return
    rules = ((obj.get("spec") or {}).get("failurePolicy") or {}).get("rules") or []
    names = [str(r.get("name", "")) for r in rules]
    for i, name in enumerate(names):
        if not 1 <= len(name) <= 128 or not FAILURE_RULE_NAME.match(name):
            yield (
                f"spec.failurePolicy.rules[{i}].name {name!r}: must start with a letter, continue with letters, "
                "digits, '_', ',' or ':' (no '-') and end with a letter, digit or '_' (1-128 characters)"
            )
        if names.count(name) > 1 and names.index(name) == i:
            yield f"spec.failurePolicy.rules: name {name!r} is not unique"


@rule(
    "jobset.failure_rule_reasons",
    "JOBSET jobset_webhook.go validateFailurePolicy: onJobFailureReasons in validOnJobFailureReasons; "
    "targetReplicatedJobs name replicated jobs",
)
def _failure_rule_reasons(obj: dict[str, Any]) -> Iterator[str]:
    if _kind(obj) != "JobSet":
        return
    spec = obj.get("spec") or {}
    rjobs = {r.get("name") for r in spec.get("replicatedJobs") or []}
    for i, r in enumerate((spec.get("failurePolicy") or {}).get("rules") or []):
        for reason in r.get("onJobFailureReasons") or []:
            if reason not in JOB_FAILURE_REASONS:
                yield f"spec.failurePolicy.rules[{i}]: onJobFailureReasons {reason!r} is not a Job failure reason"
        for target in r.get("targetReplicatedJobs") or []:
            if target not in rjobs:
                yield f"spec.failurePolicy.rules[{i}]: targetReplicatedJobs {target!r} is no replicated job"
    for target in (spec.get("successPolicy") or {}).get("targetReplicatedJobs") or []:
        if target not in rjobs:
            yield f"spec.successPolicy: targetReplicatedJobs {target!r} is no replicated job"


@rule(
    "jobset.feature_gates",
    "JOBSET features.go @ v0.12.0: InPlaceRestart and RestartJob are alpha, off by default, and the webhook "
    "refuses them then (v0.10.1 has neither)",
)
def _feature_gates(obj: dict[str, Any]) -> Iterator[str]:
    if _kind(obj) != "JobSet":
        return
    policy = (obj.get("spec") or {}).get("failurePolicy") or {}
    if policy.get("restartStrategy") == "InPlaceRestart":
        yield "spec.failurePolicy.restartStrategy InPlaceRestart needs the alpha InPlaceRestart feature gate"
    for i, r in enumerate(policy.get("rules") or []):
        if r.get("action") in ("RestartJob", "RestartJobAndIgnoreMaxRestarts"):
            yield f"spec.failurePolicy.rules[{i}].action {r['action']} needs the alpha RestartJob feature gate"


@rule(
    "jobset.generated_names",
    "JOBSET jobset_webhook.go ValidateCreate: <jobset>-<rjob>-<replicas-1> (Jobs) and "
    "<jobset>-<rjob>-<job>-<pod>-abcde (pods) are DNS-1035 labels; groupName (default 'default') and "
    "network.subdomain are DNS-1035 labels; replicated job names unique",
)
def _generated_names(obj: dict[str, Any]) -> Iterator[str]:
    if _kind(obj) != "JobSet":
        return
    name = str(_meta(obj).get("name", ""))
    spec = obj.get("spec") or {}
    seen: set[str] = set()
    for i, rjob in enumerate(spec.get("replicatedJobs") or []):
        rname = str(rjob.get("name", ""))
        if rname in seen:
            yield f"spec.replicatedJobs[{i}].name {rname!r} used twice"
        seen.add(rname)
        replicas = int(rjob.get("replicas", 1))
        job = f"{name}-{rname}-{replicas - 1}"
        if not dns1035_label(job):
            yield f"spec.replicatedJobs[{i}]: Job names like {job!r} are not DNS-1035 labels (<= 63)"
        template = (rjob.get("template") or {}).get("spec") or {}
        completions = template.get("completions")
        if (template.get("completionMode") or "Indexed") == "Indexed" and completions:
            pod = f"{job}-{int(completions) - 1}-abcde"
            if not dns1035_label(pod):
                yield f"spec.replicatedJobs[{i}]: pod names like {pod!r} are not DNS-1035 labels (<= 63)"
        group = rjob.get("groupName", "default")
        if not dns1035_label(str(group)):
            yield f"spec.replicatedJobs[{i}].groupName {group!r} must be a DNS-1035 label"
        for dep in rjob.get("dependsOn") or []:
            if i == 0:
                yield "spec.replicatedJobs[0]: the first replicated job cannot have dependsOn"
            elif dep.get("name") not in seen - {rname}:
                yield f"spec.replicatedJobs[{i}]: dependsOn {dep.get('name')!r} is no earlier replicated job"
    subdomain = (spec.get("network") or {}).get("subdomain")
    if subdomain and not (dns1123_subdomain(subdomain) and dns1035_label(subdomain)):
        yield f"spec.network.subdomain {subdomain!r} must be a DNS-1035 label"


# ---- GKE TPU webhook ------------------------------------------------------------------------------------


@rule(
    "gke.tpu_env_injection",
    "GKE: TPU_WORKER_ID/TPU_WORKER_HOSTNAMES are injected only into Indexed Jobs with a subdomain, "
    "parallelism > 1 and google.com/tpu requests (gke-tpu.md §1(a)-8); without them a multi-host program "
    "cannot find its peers",
)
def _tpu_env_injection(obj: dict[str, Any]) -> Iterator[str]:
    if _kind(obj) not in ("JobSet", "Job"):
        return
    network = (obj.get("spec") or {}).get("network") or {}
    for where, _, spec in _job_specs(obj):
        pod_spec = (spec.get("template") or {}).get("spec") or {}
        labels = pod_spec.get("nodeSelector") or {}
        accelerator, topology = labels.get(tpu_types.ACCELERATOR_LABEL), labels.get(tpu_types.TOPOLOGY_LABEL)
        if accelerator is None or topology is None:
            continue
        try:
            tpu_slice = tpu_types.slice_for_labels(str(accelerator), str(topology))
        except tpu_types.TopologyError:
            continue  # the lint reports unknown topologies
        if not tpu_slice.multi_host:
            continue
        mode = spec.get("completionMode") or ("Indexed" if _kind(obj) == "JobSet" else "NonIndexed")
        if mode != "Indexed":
            yield f"{where}: a multi-host TPU Job must be Indexed for GKE to inject TPU_WORKER_ID"
        if (spec.get("parallelism") or 1) < 2:
            yield f"{where}: a multi-host TPU Job needs parallelism > 1 for GKE's TPU environment"
        has_subdomain = pod_spec.get("subdomain") or (
            _kind(obj) == "JobSet" and network.get("enableDNSHostnames", True) is not False
        )
        if not has_subdomain:
            yield f"{where}: a multi-host TPU Job needs a pod subdomain (JobSet network.enableDNSHostnames)"


# ---- LeaderWorkerSet webhook ----------------------------------------------------------------------------


@rule(
    "lws.group",
    "LWS leaderworkerset_webhook.go generalValidate @ v0.10.0: size >= 1; replicas 0-1000000; maxSurge and "
    "maxUnavailable not both 0",
)
def _lws_group(obj: dict[str, Any]) -> Iterator[str]:
    if _kind(obj) != "LeaderWorkerSet":
        return
    spec = obj.get("spec") or {}
    size = (spec.get("leaderWorkerTemplate") or {}).get("size", 1)
    if not isinstance(size, int) or size < 1:
        yield f"spec.leaderWorkerTemplate.size {size!r} must be >= 1"
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or not 0 <= replicas <= 1_000_000:
        yield f"spec.replicas {replicas!r} must be within 0-1000000"
    rolling = (spec.get("rolloutStrategy") or {}).get("rollingUpdateConfiguration") or {}
    # CRD defaults: maxUnavailable 1, maxSurge 0.
    if str(rolling.get("maxUnavailable", 1)) in ("0", "0%") and str(rolling.get("maxSurge", 0)) in (
        "0",
        "0%",
    ):
        yield "spec.rolloutStrategy.rollingUpdateConfiguration: maxUnavailable must not be 0 when maxSurge is 0"


# ---- Deployments, Services, ConfigMaps, PriorityClasses -------------------------------------------------


def _selector_matches(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


@rule(
    "apps.deployment",
    "APPS ValidateDeploymentSpec: the selector selects the template's labels; maxSurge and maxUnavailable "
    "not both 0",
)
def _deployment(obj: dict[str, Any]) -> Iterator[str]:
    if _kind(obj) != "Deployment":
        return
    spec = obj.get("spec") or {}
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not _selector_matches(spec.get("selector") or {}, labels):
        yield "spec.selector does not match spec.template.metadata.labels"
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    if str(rolling.get("maxSurge", "25%")) in ("0", "0%") and str(rolling.get("maxUnavailable", "25%")) in (
        "0",
        "0%",
    ):
        yield "spec.strategy.rollingUpdate: maxUnavailable may not be 0 when maxSurge is 0"


@rule(
    "core.service",
    "CORE ValidateService: named ports (IANA_SVC_NAME) required and unique when there are several; a named "
    "targetPort is an IANA_SVC_NAME; selector values are label values",
)
def _service(obj: dict[str, Any]) -> Iterator[str]:
    if _kind(obj) != "Service":
        return
    spec = obj.get("spec") or {}
    ports = spec.get("ports") or []
    names = [p.get("name") for p in ports]
    for i, port in enumerate(ports):
        name = port.get("name")
        if len(ports) > 1 and not name:
            yield f"spec.ports[{i}]: a Service with several ports needs a name on each"
        if name and (not dns1123_label(str(name)) or names.count(name) > 1):
            yield f"spec.ports[{i}].name {name!r} must be a unique DNS-1123 label"
        target = port.get("targetPort")
        if isinstance(target, str) and not port_name(target):
            yield f"spec.ports[{i}].targetPort {target!r} is not an IANA_SVC_NAME"
    for key, value in (spec.get("selector") or {}).items():
        if not qualified_name(str(key)) or not label_value(str(value)):
            yield f"spec.selector[{key}]: {value!r} is not a valid label selector"


@rule(
    "core.config_map",
    "CORE ValidateConfigMap: keys IsConfigMapKey (<= 253 of [-._a-zA-Z0-9]); <= 1 MiB in all",
)
def _config_map(obj: dict[str, Any]) -> Iterator[str]:
    if _kind(obj) != "ConfigMap":
        return
    data = {**(obj.get("data") or {}), **(obj.get("binaryData") or {})}
    for key in data:
        if not _CONFIG_MAP_KEY.match(str(key)) or len(str(key)) > 253 or key in (".", ".."):
            yield f"data: key {key!r} is not a valid ConfigMap key"
    size = sum(len(str(k)) + len(str(v).encode()) for k, v in data.items())
    if size > 1024 * 1024:
        yield f"data: {size} bytes, more than the 1 MiB a ConfigMap may hold"


@rule(
    "scheduling.priority_class",
    "kubernetes pkg/apis/scheduling/validation: user classes have value <= 1000000000 and no 'system-' prefix",
)
def _priority_class(obj: dict[str, Any]) -> Iterator[str]:
    if _kind(obj) != "PriorityClass":
        return
    if str(_meta(obj).get("name", "")).startswith("system-"):
        yield "metadata.name: the 'system-' prefix is reserved"
    if int(obj.get("value", 0)) > 1_000_000_000:
        yield f"value {obj.get('value')} is above the highest user-definable priority 1000000000"


# --------------------------------------------------------------------------------------------------------


def admission_problems(objects: Iterable[dict[str, Any]]) -> list[str]:
    """Every admission-rule violation of ``objects``: ``Kind/name: [rule id] field: what is wrong``."""
    problems = []
    for obj in objects:
        ident = f"{obj.get('kind')}/{_meta(obj).get('name')}"
        for r in RULES.values():
            problems += [f"{ident}: [{r.id}] {message}" for message in r.check(obj)]
    return problems


def describe_rules() -> str:
    """The rules and their sources, one per line (``python -m k8s.admission``)."""
    return "\n".join(f"{r.id}: {r.source}" for r in RULES.values())


if __name__ == "__main__":
    print(describe_rules())
    print(json.dumps(sorted(RULES)))
