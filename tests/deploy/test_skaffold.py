"""skaffold.yaml: valid against the v4beta14 schema, builds both images, renders through `sawt deploy`,
lets skaffold substitute images in JobSet and LeaderWorkerSet, and forwards the server and metrics ports."""

from __future__ import annotations

import yaml

from k8s import lint, render
from k8s.config import REPO_ROOT, load_values

SKAFFOLD = REPO_ROOT / "skaffold.yaml"


def _config():
    return yaml.safe_load(SKAFFOLD.read_text())


def test_skaffold_yaml_passes_the_v4beta14_schema(schemas):
    assert lint.skaffold_problems(SKAFFOLD, schemas) == []


def test_schema_check_rejects_typos_and_other_versions(schemas, tmp_path):
    broken = _config()
    broken["manifests"]["rawYAML"] = broken["manifests"].pop("rawYaml")
    path = tmp_path / "skaffold.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert any("'rawYAML' was unexpected" in p for p in lint.skaffold_problems(path, schemas))
    broken = _config()
    broken["apiVersion"] = "skaffold/v4beta13"
    path.write_text(yaml.safe_dump(broken))
    assert any("expected skaffold/v4beta14" in p for p in lint.skaffold_problems(path, schemas))


def test_builds_both_images_that_the_manifests_use():
    artifacts = {a["image"]: a for a in _config()["build"]["artifacts"]}
    assert artifacts["sawt-trainer"]["docker"]["dockerfile"] == "images/trainer.Dockerfile"
    assert artifacts["sawt-server"]["docker"]["dockerfile"] == "images/server.Dockerfile"
    assert {a["context"] for a in artifacts.values()} == {"."}
    # The hooks render with the artifact names (skaffold rewrites them to the pushed tags); the values
    # files themselves name images with a registry.
    config = _config()
    for manifests in [config["manifests"], *(p["manifests"] for p in config["profiles"])]:
        script = manifests["hooks"]["before"][0]["host"]["command"][-1]
        images = {"images.trainer=sawt-trainer", "images.server=sawt-server"}
        assert images <= {part for part in script.split() if part.startswith("images.")}
    values = load_values()
    assert values.images.trainer.endswith("/sawt-trainer:0.1.0") and "/" in values.images.server


def test_renders_with_sawt_deploy_in_a_before_hook():
    config = _config()
    for manifests in [config["manifests"], *(p["manifests"] for p in config["profiles"])]:
        (hook,) = manifests["hooks"]["before"]
        script = hook["host"]["command"][-1]
        assert "deploy render $w" in script and "-o build/k8s/$w" in script
        loop = script.split("for w in ", 1)[1].split(";", 1)[0].split()
        assert set(loop) <= set(render.WORKLOADS)
        assert manifests["rawYaml"] == ["build/k8s/*/*.yaml"]
    assert "kubectl" in config["deploy"]


def test_images_are_substituted_in_jobset_and_lws():
    allowed = {entry["groupKind"] for entry in _config()["resourceSelector"]["allow"]}
    assert allowed == {"JobSet.jobset.x-k8s.io", "LeaderWorkerSet.leaderworkerset.x-k8s.io"}


def test_port_forwards_name_rendered_services():
    config = _config()
    profiles = {p["name"]: p for p in config["profiles"]}
    assert set(profiles) == {"dev", "v4-32"}
    for forwards, values_file in (
        (config["portForward"], "v4-32.yaml"),
        (profiles["dev"]["portForward"], "dev.yaml"),
        (profiles["v4-32"]["portForward"], "v4-32.yaml"),
    ):
        values = load_values(REPO_ROOT / "k8s" / "values" / values_file)
        services = {
            (o["metadata"]["name"], o["metadata"]["namespace"]): {p["port"] for p in o["spec"]["ports"]}
            for workload in ("train", "serve")
            for o in render.render_objects(values, workload)
            if o["kind"] == "Service"
        }
        for forward in forwards:
            key = (forward["resourceName"], forward["namespace"])
            assert forward["resourceType"] == "service" and key in services, (values_file, key)
            assert forward["port"] in services[key]


def test_file_sync_only_for_the_server():
    dev = next(p for p in _config()["profiles"] if p["name"] == "dev")
    (patch,) = dev["patches"]
    artifacts = _config()["build"]["artifacts"]
    index = int(patch["path"].split("/")[3])
    assert artifacts[index]["image"] == "sawt-server"
    assert all(rule["src"].endswith(".py") for rule in patch["value"]["manual"])
