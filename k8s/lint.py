"""Offline checks of rendered Kubernetes objects: strict schemas plus the rules only a webhook would apply.

Three layers (gke-tpu.md §3):
  * core kinds: `kubernetes-validate` with its strict schemas (unknown fields are errors);
  * CRD kinds (JobSet, LeaderWorkerSet, GMP and prometheus-operator objects): `jsonschema` against the CRD
    files vendored in k8s/schemas (k8s/schemas/README.md: versions and licences), made strict as the API server's field validation is
    (`additionalProperties: false` wherever `properties` exist without `x-kubernetes-preserve-unknown-fields`);
    a kind with no schema at all is a failure, never a warning;
  * admission: what the JobSet/LWS webhooks and the API server's Job, pod and name validation enforce beyond
    the schemas, each rule with its source (k8s/admission.py);
  * semantics: TPU chips and hosts match the topology, completions == parallelism == hosts, ports unique and
    clear of the TPU runtime's, names within 63 characters (JobSet pod names included), labels present,
    safe security contexts.

Run on files: ``.venv/bin/python -m k8s.lint FILE.yaml ...`` (exit 1 on problems).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from k8s import admission, tpu_types
from k8s.config import PACKAGE_DIR

# The Kubernetes minor version whose strict schemas core kinds are checked against (GKE regular channel).
KUBERNETES_VERSION = "1.33"
# The upstream CRD and skaffold schemas ship inside the package (k8s/schemas/README.md).
SCHEMAS_DIR = PACKAGE_DIR / "schemas"
REQUIRED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
MAX_NAME = 63
# Random suffix Kubernetes appends to generated pod names ("-xxxxx").
POD_SUFFIX = 6

# (apiVersion, kind) -> CRD files (relative to the schemas dir) to check against; JobSet against both the
# latest release and the version xpk installs, so the manifests work on either.
CRD_FILES: dict[tuple[str, str], tuple[str, ...]] = {
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): (
        "jobset/jobset.x-k8s.io_jobsets.yaml",
        "jobset-v0.10.1/jobset.x-k8s.io_jobsets.yaml",
    ),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): (
        "lws/leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    ),
    ("monitoring.googleapis.com/v1", "PodMonitoring"): ("gmp/monitoring.googleapis.com_podmonitorings.yaml",),
    ("monitoring.googleapis.com/v1", "ClusterPodMonitoring"): (
        "gmp/monitoring.googleapis.com_clusterpodmonitorings.yaml",
    ),
    ("monitoring.googleapis.com/v1", "Rules"): ("gmp/monitoring.googleapis.com_rules.yaml",),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "prometheus-operator/monitoring.coreos.com_servicemonitors.yaml",
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): (
        "prometheus-operator/monitoring.coreos.com_podmonitors.yaml",
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "prometheus-operator/monitoring.coreos.com_prometheusrules.yaml",
    ),
}
SKAFFOLD_SCHEMA = "skaffold/skaffold-v4beta14.json"
SKAFFOLD_API_VERSION = "skaffold/v4beta14"


class SchemasMissing(FileNotFoundError):
    """The schema folder lacks the files the checks need (a broken install, or a wrong --schemas)."""


def schemas_dir(path: Path | None = None) -> Path:
    """The schema folder (default: the copy vendored in k8s/schemas), or a clear error."""
    folder = path or SCHEMAS_DIR
    if not (folder / CRD_FILES[("jobset.x-k8s.io/v1alpha2", "JobSet")][0]).is_file():
        raise SchemasMissing(
            f"CRD schemas not found under {folder}: expected the layout of k8s/schemas "
            "(see k8s/schemas/README.md)"
        )
    return folder


# ---------------------------------------------------------------------------------------------------------
# Schemas


def strict_schema(schema: Any) -> Any:
    """A copy of a CRD's openAPIV3Schema that rejects unknown fields and maps Kubernetes extensions."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def _crd_validator(path: Path, version: str) -> jsonschema.Draft7Validator:
    with path.open() as handle:
        crd = yaml.load(handle, Loader=yaml.CSafeLoader)
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema = strict_schema(served["schema"]["openAPIV3Schema"])
            # metadata is checked on its own against the core ObjectMeta schema.
            schema["properties"]["metadata"] = {"type": "object"}
            return jsonschema.Draft7Validator(schema)
    raise KeyError(f"{path} serves no version {version}")


def _error_text(err: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "<root>"
    return f"{where}: {err.message}"


def _core_errors(obj: dict[str, Any]) -> list[str]:
    import kubernetes_validate.utils as kv

    try:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as err:
        return [_error_text(err)]
    except kv.SchemaNotFoundError as err:
        return [f"no schema for kind {err.kind} ({err.api_version}): cannot check it"]
    return []


def schema_errors(obj: dict[str, Any], schemas: Path | None = None) -> list[str]:
    """Strict-schema problems of one object: core kinds by kubernetes-validate, CRDs by their CRD schema."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    files = CRD_FILES.get(key)
    if files is None:
        return _core_errors(obj)
    folder = schemas_dir(schemas)
    version = key[0].split("/")[-1]
    errors = []
    for name in files:
        validator = _crd_validator(folder / name, version)
        label = name.split("/")[0]
        errors += [f"{_error_text(e)} [{label}]" for e in validator.iter_errors(obj)]
    # ObjectMeta of a custom object, through the core schema of a ConfigMap that carries it.
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
    errors += _core_errors(meta)
    return errors


# ---------------------------------------------------------------------------------------------------------
# Semantic checks


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod template inside a workload object."""
    kind, spec = obj.get("kind"), obj.get("spec", {})
    if kind in ("Deployment", "Job"):
        yield "spec.template", spec.get("template", {})
    elif kind == "JobSet":
        for i, rjob in enumerate(spec.get("replicatedJobs", [])):
            yield f"spec.replicatedJobs[{i}].template.spec.template", rjob["template"]["spec"]["template"]
    elif kind == "LeaderWorkerSet":
        lwt = spec.get("leaderWorkerTemplate", {})
        for key in ("leaderTemplate", "workerTemplate"):
            if key in lwt:
                yield f"spec.leaderWorkerTemplate.{key}", lwt[key]


def _tpu_slice(pod_spec: dict[str, Any]) -> tpu_types.TpuSlice | None:
    selector = pod_spec.get("nodeSelector", {})
    accelerator = selector.get(tpu_types.ACCELERATOR_LABEL)
    topology = selector.get(tpu_types.TOPOLOGY_LABEL)
    if accelerator is None and topology is None:
        return None
    return tpu_types.slice_for_labels(str(accelerator), str(topology))


def _pod_problems(where: str, template: dict[str, Any]) -> tuple[list[str], tpu_types.TpuSlice | None]:
    problems: list[str] = []
    spec = template.get("spec", {})
    try:
        tpu_slice = _tpu_slice(spec)
    except tpu_types.TopologyError as err:
        return [f"{where}: {err}"], None
    ports: dict[int, str] = {}
    port_names: set[str] = set()
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        cname = container.get("name")
        for port in container.get("ports", []):
            number, pname = port.get("containerPort"), port.get("name")
            if number in ports:
                problems.append(f"{where}: port {number} used twice ({ports[number]} and {cname})")
            ports[number] = cname
            if pname:
                if pname in port_names:
                    problems.append(f"{where}: port name {pname!r} used twice")
                port_names.add(pname)
            if (tpu_slice or spec.get("hostNetwork")) and number in tpu_types.TPU_RESERVED_PORTS:
                problems.append(f"{where}: container {cname} port {number} is a TPU runtime port")
        sec = container.get("securityContext", {})
        if tpu_slice is None:
            # CPU pods keep the restricted profile; TPU pods follow Google's references (k8s/config.py Security).
            if sec.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: container {cname} must set allowPrivilegeEscalation: false")
            if "ALL" not in sec.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: container {cname} must drop ALL capabilities")
        elif sec.get("privileged"):
            user = sec.get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
            if user != 0:
                problems.append(
                    f"{where}: container {cname} is privileged but runs as uid {user}: privileged implies root "
                    "(runAsUser: 0), as in xpk"
                )
        tpu_request = container.get("resources", {}).get("requests", {}).get(tpu_types.TPU_RESOURCE)
        tpu_limit = container.get("resources", {}).get("limits", {}).get(tpu_types.TPU_RESOURCE)
        if tpu_slice is not None:
            if tpu_limit is None or int(tpu_limit) != tpu_slice.chips_per_host:
                problems.append(
                    f"{where}: container {cname} asks {tpu_types.TPU_RESOURCE}: {tpu_limit}, but a "
                    f"{tpu_slice.type} {tpu_slice.topology} host has {tpu_slice.chips_per_host} chips"
                )
            if tpu_request is not None and tpu_request != tpu_limit:
                problems.append(f"{where}: container {cname}: TPU requests must equal limits")
        elif tpu_limit is not None or tpu_request is not None:
            problems.append(f"{where}: container {cname} asks for TPUs without TPU node selectors")
    if tpu_slice is not None:
        tolerated = any(t.get("key") == tpu_types.TPU_RESOURCE for t in spec.get("tolerations", []))
        if not tolerated:
            problems.append(f"{where}: TPU pod lacks the {tpu_types.TPU_RESOURCE} toleration")
    elif not spec.get("securityContext", {}).get("runAsNonRoot"):
        problems.append(f"{where}: a pod without TPUs must run as non-root")
    if spec.get("hostNetwork") and spec.get("dnsPolicy") != "ClusterFirstWithHostNet":
        problems.append(f"{where}: hostNetwork needs dnsPolicy ClusterFirstWithHostNet")
    for key, value in template.get("metadata", {}).get("annotations", {}).items():
        if not isinstance(value, str):
            problems.append(f"{where}: annotation {key} must be a string")
    uses_fuse = any(
        v.get("csi", {}).get("driver") == "gcsfuse.csi.storage.gke.io" for v in spec.get("volumes", [])
    )
    if uses_fuse and template.get("metadata", {}).get("annotations", {}).get("gke-gcsfuse/volumes") != "true":
        problems.append(f'{where}: GCS FUSE volumes need the gke-gcsfuse/volumes: "true" annotation')
    return problems, tpu_slice


def _jobset_problems(obj: dict[str, Any]) -> list[str]:
    problems = []
    name = obj["metadata"]["name"]
    spec = obj.get("spec", {})
    rules = spec.get("failurePolicy", {}).get("rules", [])
    if any(not rule.get("name") for rule in rules):
        # The CRD requires a name; the webhook would default one, but an offline check cannot see it.
        problems.append(f"JobSet/{name}: every failurePolicy rule needs a name")
    for i, rjob in enumerate(spec.get("replicatedJobs", [])):
        where = f"JobSet/{name} replicatedJobs[{i}]"
        job = rjob["template"]["spec"]
        pod = job["template"]
        replicas = rjob.get("replicas", 1)
        parallelism, completions = job.get("parallelism", 1), job.get("completions", 1)
        longest = f"{name}-{rjob['name']}-{replicas - 1}-{completions - 1}"
        if len(longest) + POD_SUFFIX > MAX_NAME:
            problems.append(
                f"{where}: pod names like {longest}-xxxxx are {len(longest) + POD_SUFFIX} characters "
                f"(> {MAX_NAME}); shorten the JobSet name"
            )
        try:
            tpu_slice = _tpu_slice(pod.get("spec", {}))
        except tpu_types.TopologyError:
            continue  # reported with the pod template
        if tpu_slice is None:
            continue
        if not parallelism == completions == tpu_slice.hosts:
            problems.append(
                f"{where}: parallelism {parallelism} and completions {completions} must both equal the "
                f"{tpu_slice.hosts} hosts of {tpu_slice.type} {tpu_slice.topology}"
            )
        if job.get("completionMode") != "Indexed":
            problems.append(f"{where}: TPU Jobs must be Indexed (GKE injects TPU_WORKER_ID from the index)")
        if job.get("backoffLimit") != 0:
            problems.append(f"{where}: backoffLimit must be 0 (a lost host fails the whole program)")
        if pod.get("spec", {}).get("restartPolicy") != "Never":
            problems.append(f"{where}: restartPolicy must be Never")
    if spec.get("replicatedJobs") and "alpha.jobset.sigs.k8s.io/exclusive-topology" not in obj[
        "metadata"
    ].get("annotations", {}):
        problems.append(f"JobSet/{name}: missing the exclusive-topology annotation (one slice per node pool)")
    return problems


def _monitoring_problems(obj: dict[str, Any]) -> list[str]:
    kind, name = obj.get("kind"), obj["metadata"]["name"]
    problems = []
    if kind == "PodMonitoring":
        for i, endpoint in enumerate(obj.get("spec", {}).get("endpoints", [])):
            if "interval" not in endpoint:
                problems.append(
                    f"PodMonitoring/{name}: endpoints[{i}] needs an interval (required by GMP 0.17+)"
                )
    if kind == "ConfigMap" and "grafana_dashboard" in obj["metadata"].get("labels", {}):
        for key, text in obj.get("data", {}).items():
            try:
                board = json.loads(text)
            except json.JSONDecodeError as err:
                problems.append(f"ConfigMap/{name}: {key} is not JSON: {err}")
                continue
            if not board.get("panels"):
                problems.append(f"ConfigMap/{name}: dashboard {key} has no panels")
    return problems


def semantic_problems(objects: Iterable[dict[str, Any]]) -> list[str]:
    """Problems a schema cannot see: sawt's own rules, then the cluster's admission rules (k8s/admission.py).

    Each message names the object and the field.
    """
    objects = list(objects)
    return _house_problems(objects) + admission.admission_problems(objects)


def _house_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        meta = obj.get("metadata", {})
        name = meta.get("name", "")
        ident = (obj.get("kind", ""), meta.get("namespace", ""), name)
        if ident in seen:
            problems.append(f"{_name(obj)}: defined twice")
        seen.add(ident)
        if len(name) > MAX_NAME:
            problems.append(f"{_name(obj)}: name is {len(name)} characters (> {MAX_NAME})")
        labels = meta.get("labels", {})
        missing = [key for key in REQUIRED_LABELS if key not in labels]
        if missing:
            problems.append(f"{_name(obj)}: missing labels {', '.join(missing)}")
        for where, template in pod_templates(obj):
            pod_problems, tpu_slice = _pod_problems(f"{_name(obj)} {where}", template)
            problems += pod_problems
            if obj.get("kind") == "Deployment" and tpu_slice is not None and tpu_slice.multi_host:
                problems.append(
                    f"{_name(obj)}: a Deployment cannot span the {tpu_slice.hosts} hosts of a slice"
                )
            if obj.get("kind") == "LeaderWorkerSet" and tpu_slice is not None:
                size = obj["spec"]["leaderWorkerTemplate"].get("size", 1)
                if size != tpu_slice.hosts:
                    problems.append(f"{_name(obj)}: size {size} != {tpu_slice.hosts} hosts of the slice")
        if obj.get("kind") == "LeaderWorkerSet":
            # LWS names pods <name>-<group>-<worker> (no random suffix); each must be a DNS label.
            spec = obj.get("spec", {})
            longest = f"{name}-{spec.get('replicas', 1) - 1}-{spec.get('leaderWorkerTemplate', {}).get('size', 1) - 1}"
            if len(longest) > MAX_NAME:
                problems.append(
                    f"{_name(obj)}: pod names like {longest} are longer than {MAX_NAME} characters"
                )
        if obj.get("kind") == "JobSet":
            problems += _jobset_problems(obj)
        if obj.get("kind") == "Job":
            spec = obj.get("spec", {})
            if spec.get("parallelism", 1) > spec.get("completions", 1):
                problems.append(f"{_name(obj)}: parallelism exceeds completions")
            longest = f"{name}-{spec.get('completions', 1) - 1}"
            if len(longest) + POD_SUFFIX > MAX_NAME:
                problems.append(f"{_name(obj)}: pod names are longer than {MAX_NAME} characters")
        problems += _monitoring_problems(obj)
    return problems


def has_registry(image: str) -> bool:
    """Whether an image reference names its registry, by the rule of Docker's reference parser: the part
    before the first '/' is a registry when it has a '.' or ':' or is 'localhost'; otherwise the image comes
    from Docker Hub (docker.io/library/...)."""
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def image_problems(objects: Iterable[dict[str, Any]]) -> list[str]:
    """Containers whose image has no registry (so a GKE node would pull it from Docker Hub)."""
    problems = []
    for obj in objects:
        for where, template in pod_templates(obj):
            for container in [
                *template.get("spec", {}).get("initContainers", []),
                *template.get("spec", {}).get("containers", []),
            ]:
                image = str(container.get("image", ""))
                if not has_registry(image):
                    problems.append(
                        f"{_name(obj)} {where}: container {container.get('name')} image {image!r} has no registry "
                        "and would be pulled from Docker Hub; set images.trainer/images.server to "
                        "REGION-docker.pkg.dev/PROJECT/REPO/NAME:TAG (skaffold --default-repo does it for its "
                        "renders), or pass --allow-unqualified-images"
                    )
    return problems


def lint(objects: Iterable[dict[str, Any]], schemas: Path | None = None) -> list[str]:
    """Every problem of ``objects``: strict schemas first, then the semantic rules."""
    objects = list(objects)
    problems: list[str] = []
    for obj in objects:
        problems += [f"{_name(obj)}: {msg}" for msg in schema_errors(copy.deepcopy(obj), schemas)]
    return problems + semantic_problems(objects)


# ---------------------------------------------------------------------------------------------------------
# skaffold


def skaffold_problems(path: Path, schemas: Path | None = None) -> list[str]:
    """Problems of a skaffold.yaml against the v4beta14 JSON schema (plus the apiVersion it must carry)."""
    folder = schemas_dir(schemas)
    schema = json.loads((folder / SKAFFOLD_SCHEMA).read_text())
    problems = []
    for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
        if not doc:
            continue
        if doc.get("apiVersion") != SKAFFOLD_API_VERSION:
            problems.append(f"apiVersion is {doc.get('apiVersion')!r}, expected {SKAFFOLD_API_VERSION}")
        validator = jsonschema.Draft7Validator(schema)
        for err in validator.iter_errors(doc):
            # The root is an anyOf over config versions: the useful messages are nested in its context.
            leaves = [e for e in err.context if not e.context] or [err]
            problems += sorted({_error_text(leaf) for leaf in leaves})
    return problems


def load_objects(paths: Iterable[Path]) -> list[dict[str, Any]]:
    objects = []
    for path in paths:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
        objects += [doc for doc in yaml.load_all(text, Loader=yaml.CSafeLoader) if doc]
    return objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check rendered manifests offline (strict schemas + rules).")
    parser.add_argument("files", nargs="+", type=Path, help="YAML files ('-' for stdin)")
    parser.add_argument("--schemas", type=Path, default=None, help=f"schemas folder (default {SCHEMAS_DIR})")
    parser.add_argument(
        "--allow-unqualified-images", action="store_true", help="accept images without a registry"
    )
    args = parser.parse_args(argv)
    objects = load_objects(args.files)
    problems = lint(objects, args.schemas)
    if not args.allow_unqualified_images:
        problems += image_problems(objects)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
