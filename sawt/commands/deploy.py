"""`sawt deploy`: render the GKE TPU manifests of a workload, and apply, inspect or delete them."""

from __future__ import annotations

import argparse
import sys

WORKLOADS = ("train", "batch-infer", "data-convert", "ckpt-convert", "serve", "monitoring")
WORKLOAD_HELP = {
    "train": "JobSet on the training slice (v4-32 by default), config as a ConfigMap",
    "batch-infer": "JobSet running `sawt batch-infer` over a dataset",
    "data-convert": "indexed CPU Job running `sawt data convert`",
    "ckpt-convert": "CPU Job running `sawt convert hf-to-orbax`",
    "serve": "server Deployment (single-host slice) or LeaderWorkerSet (multi-host) + Service (+ HPA)",
    "monitoring": "PodMonitoring/Rules (GMP) or PodMonitor/ServiceMonitor/PrometheusRule + Grafana dashboards",
}


def _add_values_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workload", choices=WORKLOADS, metavar="WORKLOAD", help=", ".join(WORKLOADS))
    parser.add_argument(
        "-f",
        "--values",
        metavar="FILE",
        default=None,
        help="values YAML (default: k8s/values/v4-32.yaml); keys are documented in k8s/config.py",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value, e.g. --set tpu.type=v5p --set tpu.topology=2x4x4 (repeatable)",
    )


def _add_image_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-unqualified-images",
        action="store_true",
        help="accept images without a registry (a bare name like sawt-trainer is pulled from Docker Hub); "
        "for a cluster with a pull-through mirror or pre-loaded images",
    )


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "deploy",
        help="render and manage the GKE TPU workloads (JobSet, Deployment, monitoring)",
        description="Render Kubernetes manifests from typed values (k8s/templates + k8s/values), and apply, "
        "inspect or delete them through the Kubernetes API.\n\nWorkloads:\n"
        + "\n".join(f"  {name:<13} {about}" for name, about in WORKLOAD_HELP.items())
        + "\n\nExamples:\n"
        "  sawt deploy render train | kubectl apply --server-side -f -\n"
        "  sawt deploy render train --set tpu.type=v5p --set tpu.topology=2x4x4 -o build/k8s\n"
        "  sawt deploy apply serve -f k8s/values/dev.yaml --dry-run\n"
        "  sawt deploy doctor -f k8s/values/v4-32.yaml\n"
        "  sawt deploy status train\n"
        "  sawt deploy logs train --tail 50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    render = actions.add_parser(
        "render",
        help="print the manifests as multi-document YAML (or write one file per object)",
        description="Render WORKLOAD. The objects are checked (TPU shape, names, ports, labels, security) "
        "before anything is printed; --validate also checks them against the strict Kubernetes and CRD "
        "schemas (vendored in k8s/schemas) and the admission rules of the JobSet, Job and LeaderWorkerSet "
        "controllers (k8s/admission.py).",
    )
    _add_values_args(render)
    render.add_argument(
        "-o", "--out", metavar="DIR", default=None, help="write one YAML file per object into DIR"
    )
    render.add_argument(
        "--validate",
        action="store_true",
        help="also validate against the strict schemas and require images with a registry",
    )
    _add_image_arg(render)
    render.set_defaults(func=_render)

    apply = actions.add_parser("apply", help="server-side apply the workload's objects")
    _add_values_args(apply)
    _add_cluster_args(apply)
    apply.add_argument("--dry-run", action="store_true", help="print what would be applied; contact nothing")
    _add_image_arg(apply)
    apply.set_defaults(func=_apply)

    status = actions.add_parser(
        "status", help="summarise the workload: JobSet restarts, Jobs, pods and the last failure reason"
    )
    _add_values_args(status)
    _add_cluster_args(status)
    status.set_defaults(func=_status)

    logs = actions.add_parser("logs", help="print the logs of the workload's pods")
    _add_values_args(logs)
    _add_cluster_args(logs)
    logs.add_argument("--tail", type=int, default=100, help="lines per pod (default 100; -1 for all)")
    logs.add_argument("--pod", default=None, help="only this pod (default: every pod of the workload)")
    logs.set_defaults(func=_logs)

    doctor = actions.add_parser(
        "doctor",
        help="check that the cluster has what the manifests assume (CRDs, identity, CSI driver, TPU nodes)",
        description="Preflight through the Kubernetes API (read-only): the JobSet CRD and controller (and "
        "LeaderWorkerSet when the server is multi-host), the monitoring CRDs, the namespace, the service "
        "account and its Workload Identity annotation, the PriorityClass, the GCS FUSE CSI driver, TPU nodes "
        "with the accelerator/topology labels and google.com/tpu allocatable for every slice, and the images' "
        "registry. Each check prints what it found and, when it fails, how to fix it; exit 1 if any fails.",
    )
    doctor.add_argument("-f", "--values", metavar="FILE", default=None, help="values YAML (default: v4-32)")
    doctor.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a value"
    )
    _add_cluster_args(doctor)
    doctor.set_defaults(func=_doctor)

    delete = actions.add_parser("delete", help="delete the workload's objects (and their Jobs and pods)")
    _add_values_args(delete)
    _add_cluster_args(delete)
    delete.add_argument("--dry-run", action="store_true", help="print what would be deleted; contact nothing")
    delete.add_argument(
        "--all", action="store_true", help="also delete the shared ServiceAccount and PriorityClass"
    )
    delete.set_defaults(func=_delete)


def _objects(args: argparse.Namespace, schemas: bool = False, images: bool = False) -> list[dict]:
    """Loads values, renders the workload and refuses objects that fail the lint.

    ``schemas`` adds the strict schemas, ``images`` the registry check (unless --allow-unqualified-images).
    """
    from core.errors import UsageError
    from k8s import lint, render
    from k8s.config import load_values

    values = load_values(args.values, args.overrides)
    try:
        objects = render.render_objects(values, args.workload)
    except render.RenderError as err:
        raise UsageError(str(err)) from None
    problems = lint.lint(objects) if schemas else lint.semantic_problems(objects)
    if images and not getattr(args, "allow_unqualified_images", False):
        problems += lint.image_problems(objects)
    if problems:
        raise UsageError(f"the rendered {args.workload} manifests have problems:\n  " + "\n  ".join(problems))
    return objects


def _render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from k8s import render

    objects = _objects(args, schemas=args.validate, images=args.validate)
    if args.out:
        for path in render.write_objects(objects, Path(args.out)):
            print(path, file=sys.stderr)
    else:
        sys.stdout.write(render.dump_objects(objects))
    return 0


def _cluster(args: argparse.Namespace):
    from core.errors import UsageError
    from k8s import client

    try:
        return client.Cluster(client.connect(args.kubeconfig, args.context))
    except client.DeployError as err:
        raise UsageError(str(err)) from None


def _guarded(fn):
    """Runs a cluster operation, turning DeployError into a one-line usage error."""
    from core.errors import UsageError
    from k8s import client

    try:
        return fn()
    except client.DeployError as err:
        raise UsageError(str(err)) from None


def _apply(args: argparse.Namespace) -> int:
    from k8s import client

    objects = _objects(args, images=True)
    if args.dry_run:
        for obj in objects:
            print(f"would apply {client.describe(obj)} (server-side, field manager {client.FIELD_MANAGER})")
        return 0
    cluster = _cluster(args)
    for obj in objects:
        _guarded(lambda obj=obj: cluster.apply(obj))
        print(f"{client.describe(obj)} applied")
    return 0


def _status(args: argparse.Namespace) -> int:
    from k8s import client

    objects = list(client.workload_objects(_objects(args), args.workload))
    cluster = _cluster(args)
    for obj in objects:
        for line in _guarded(lambda obj=obj: client.summarize(cluster, obj)):
            print(line)
    return 0


def _logs(args: argparse.Namespace) -> int:
    from core.errors import UsageError
    from k8s import client

    objects = list(client.workload_objects(_objects(args), args.workload))
    cluster = _cluster(args)
    pods = []
    for obj in objects:
        selector = client.pod_selector(obj)
        if selector:
            pods += _guarded(lambda s=selector, o=obj: cluster.list("Pod", o["metadata"]["namespace"], s))
    if args.pod:
        pods = [p for p in pods if p["metadata"]["name"] == args.pod]
    if not pods:
        raise UsageError(f"no pods found for {args.workload}" + (f" named {args.pod}" if args.pod else ""))
    tail = None if args.tail < 0 else args.tail
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name = pod["metadata"]["name"]
        # Before GKE 1.29 the GCS FUSE sidecar is injected as the first container: skip it.
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = next((n for n in names if n != "gke-gcsfuse-sidecar"), names[0])
        text = _guarded(
            lambda n=name, c=container, ns=pod["metadata"]["namespace"]: cluster.pod_log(ns, n, c, tail)
        )
        for line in text.splitlines():
            print(f"[{name}] {line}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from k8s import client

    objects = _objects(args)
    if not args.all:
        objects = list(client.workload_objects(objects, args.workload))
    if args.dry_run:
        for obj in objects:
            print(f"would delete {client.describe(obj)}")
        return 0
    cluster = _cluster(args)
    for obj in reversed(objects):
        deleted = _guarded(lambda obj=obj: cluster.delete(obj))
        print(f"{client.describe(obj)} {'deleted' if deleted else 'not found'}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from k8s import doctor
    from k8s.config import load_values

    values = load_values(args.values, args.overrides)
    cluster = _cluster(args)
    checks = _guarded(lambda: doctor.run_checks(cluster.api_client, values))
    return doctor.report(checks)
