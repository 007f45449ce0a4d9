"""A recording stand-in for the Kubernetes API server: a real HTTP server on 127.0.0.1.

A real API server (etcd, kube-apiserver, the JobSet controller) cannot run in this sandbox, so the
`sawt deploy` cluster tests talk to this stub instead. It answers the handful of calls the client makes the
way the API server does (server-side apply stores the object; GET/LIST/DELETE; API discovery for CRD
groups; pod logs) and records every request, so a test can assert on the exact method, path, query and body.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Collections the stub knows; the last path segment of a list request.
PLURALS = {
    "serviceaccounts",
    "configmaps",
    "services",
    "pods",
    "deployments",
    "jobs",
    "horizontalpodautoscalers",
    "priorityclasses",
    "jobsets",
    "leaderworkersets",
    "podmonitorings",
    "rules",
    "podmonitors",
    "servicemonitors",
    "prometheusrules",
    "nodes",
    "namespaces",
    "customresourcedefinitions",
    "csidrivers",
}
DEFAULT_GROUPS = {
    "jobset.x-k8s.io/v1alpha2": ["jobsets"],
    "leaderworkerset.x-k8s.io/v1": ["leaderworkersets"],
    "monitoring.googleapis.com/v1": ["podmonitorings", "rules", "clusterpodmonitorings"],
    "apiextensions.k8s.io/v1": ["customresourcedefinitions"],
    "storage.k8s.io/v1": ["csidrivers"],
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any


@dataclass
class ApiServerStub:
    """State shared with the handler: stored objects, installed CRD groups, pod logs, recorded requests."""

    groups: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_GROUPS))
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def put(self, path: str, obj: dict[str, Any]) -> None:
        """Seeds an object (e.g. a Job or Pod the controllers would have made) at its item path."""
        self.objects[path] = obj

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("PATCH", "POST", "PUT", "DELETE")]


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


class _Handler(BaseHTTPRequestHandler):
    stub: ApiServerStub

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict[str, list[str]], Any]:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode()
        query = parse_qs(parts.query)
        self.stub.requests.append(
            Request(self.command, parts.path, query, self.headers.get("Content-Type", ""), body)
        )
        return parts.path.rstrip("/"), query, body

    def _group_missing(self, path: str) -> bool:
        segments = path.split("/")
        if (
            len(segments) > 3
            and segments[1] == "apis"
            and "." in segments[2]
            and segments[2] != "scheduling.k8s.io"
        ):
            group_version = f"{segments[2]}/{segments[3]}"
            return group_version not in self.stub.groups and not group_version.startswith(
                ("apps/", "batch/", "autoscaling/")
            )
        return False

    def do_GET(self) -> None:
        path, query, _ = self._record()
        segments = path.split("/")
        if len(segments) == 4 and segments[1] == "apis" and "." in segments[2]:  # discovery
            group_version = f"{segments[2]}/{segments[3]}"
            plurals = self.stub.groups.get(group_version)
            if plurals is None:
                self._send(404, "404 page not found", "text/plain")
                return
            resources = [
                {"name": p, "namespaced": True, "kind": p, "verbs": ["get", "patch"]} for p in plurals
            ]
            self._send(
                200, {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}
            )
            return
        if self._group_missing(path):
            self._send(404, "404 page not found", "text/plain")
            return
        if path.endswith("/log"):
            pod = segments[-2]
            if f"{'/'.join(segments[:-1])}" not in self.stub.objects:
                self._send(404, _status(404, "NotFound", f'pods "{pod}" not found'))
                return
            self._send(200, self.stub.logs.get(pod, ""), "text/plain")
            return
        if segments[-1] in PLURALS:
            selector = query.get("labelSelector", [""])[0]
            items = [
                obj
                for key, obj in self.stub.objects.items()
                if key.rsplit("/", 1)[0] == path
                and _selector_matches(selector, obj.get("metadata", {}).get("labels", {}))
            ]
            self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
            return
        obj = self.stub.objects.get(path)
        if obj is None:
            self._send(404, _status(404, "NotFound", f'{segments[-2]} "{segments[-1]}" not found'))
            return
        self._send(200, obj)

    def do_PATCH(self) -> None:
        path, query, body = self._record()
        if self._group_missing(path):
            self._send(404, "404 page not found", "text/plain")
            return
        if self.headers.get("Content-Type") != "application/apply-patch+yaml" or "fieldManager" not in query:
            self._send(415, _status(415, "UnsupportedMediaType", "only server-side apply is served"))
            return
        stored = json.loads(json.dumps(body))
        old = self.stub.objects.get(path, {})
        stored.setdefault("metadata", {})["uid"] = old.get("metadata", {}).get("uid", str(uuid.uuid4()))
        stored["metadata"]["resourceVersion"] = str(len(self.stub.requests))
        if "status" in old:
            stored["status"] = old["status"]
        self.stub.objects[path] = stored
        self._send(200, stored)

    def do_DELETE(self) -> None:
        path, _, _ = self._record()
        if self._group_missing(path):
            self._send(404, "404 page not found", "text/plain")
            return
        obj = self.stub.objects.pop(path, None)
        if obj is None:
            self._send(404, _status(404, "NotFound", f"{path} not found"))
            return
        self._send(
            200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": path}}
        )


def start(stub: ApiServerStub) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"stub": stub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def write_kubeconfig(path: Path, url: str, namespace: str = "sawt") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stub", "cluster": {"server": url}}],
        "users": [{"name": "stub", "user": {"token": "stub-token"}}],
        "contexts": [
            {"name": "stub", "context": {"cluster": "stub", "user": "stub", "namespace": namespace}}
        ],
        "current-context": "stub",
    }
    path.write_text(json.dumps(config))
    return path


# A healthy GKE cluster, as `sawt deploy doctor` expects it for the default values.
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def crd(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"versions": [{"name": version, "served": True}]}}


def tpu_node(name: str, topology: str, chips: str = "4") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {
                "cloud.google.com/gke-tpu-accelerator": "tpu-v4-podslice",
                "cloud.google.com/gke-tpu-topology": topology,
            },
        },
        "status": {"allocatable": {"google.com/tpu": chips, "cpu": "240"}},
    }


def jobset_controller(image: str, available: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "jobset-controller-manager"},
        "spec": {"template": {"spec": {"containers": [{"name": "manager", "image": image}]}}},
        "status": {"availableReplicas": available},
    }


def healthy_gke() -> ApiServerStub:
    """Everything the default values need: JobSet v0.10.1, GMP, the GCS FUSE driver, a v4-32 pool (4 nodes)
    and a v4-8 pool (1 node), the namespace."""
    state = ApiServerStub()
    state.put(f"{CRDS}/jobsets.jobset.x-k8s.io", crd("jobsets.jobset.x-k8s.io", "v1alpha2"))
    state.put(
        f"{CRDS}/podmonitorings.monitoring.googleapis.com",
        crd("podmonitorings.monitoring.googleapis.com", "v1"),
    )
    state.put(
        "/apis/apps/v1/namespaces/jobset-system/deployments/jobset-controller-manager",
        jobset_controller("registry.k8s.io/jobset/jobset:v0.10.1"),
    )
    state.put("/apis/storage.k8s.io/v1/csidrivers/gcsfuse.csi.storage.gke.io", {"metadata": {"name": "x"}})
    state.put("/api/v1/namespaces/sawt", {"metadata": {"name": "sawt"}})
    for i in range(4):
        state.put(f"/api/v1/nodes/gke-v4-32-{i}", tpu_node(f"gke-v4-32-{i}", "2x2x4"))
    state.put("/api/v1/nodes/gke-v4-8-0", tpu_node("gke-v4-8-0", "2x2x1"))
    return state
