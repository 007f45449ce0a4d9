"""`sawt deploy render`: YAML on stdout that parses back to the rendered objects, one file per object with
-o, retargeting with --set, and one-line errors (exit 2) for bad values."""

from __future__ import annotations

import yaml

from k8s import render
from k8s.config import load_values
from sawt.cli import main


def test_render_prints_multi_document_yaml(capsys):
    assert main(["deploy", "render", "train"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert docs == render.render_objects(load_values(), "train")
    assert [d["kind"] for d in docs] == ["ServiceAccount", "PriorityClass", "ConfigMap", "JobSet", "Service"]


def test_render_writes_one_file_per_object(tmp_path, capsys):
    out = tmp_path / "manifests"
    assert main(["deploy", "render", "monitoring", "-o", str(out), "--validate"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "00-pod-monitoring-sawt-train.yaml",
        "01-pod-monitoring-sawt-server.yaml",
        "02-rules-sawt-alerts.yaml",
        "03-config-map-sawt-dashboard-training.yaml",
        "04-config-map-sawt-dashboard-inference.yaml",
    ]
    for name in files:
        (doc,) = [d for d in yaml.safe_load_all((out / name).read_text()) if d]
        assert doc["metadata"]["name"] in name


def test_set_retargets_the_slice(capsys):
    assert main(["deploy", "render", "train", "--set", "tpu.type=v6e", "--set", "tpu.topology=8x8"]) == 0
    (jobset,) = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d and d["kind"] == "JobSet"]
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 16
    assert job["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"] == "tpu-v6e-slice"


def test_bad_values_are_one_line_errors(tmp_path, capsys):
    assert main(["deploy", "render", "train", "--set", "tpu.topology=2x2x3"]) == 2
    assert "no topology '2x2x3'" in capsys.readouterr().err
    assert main(["deploy", "render", "train", "-f", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  restart_exitcode: 42\n")
    assert main(["deploy", "render", "train", "-f", str(bad)]) == 2
    assert "train.restart_exitcode: unknown key" in capsys.readouterr().err


def test_render_refuses_manifests_that_fail_the_lint(capsys):
    assert main(["deploy", "render", "train", "--set", "train.run_name=" + "r" * 48]) == 2
    assert "pod names like" in capsys.readouterr().err
