"""Rendering: every workload x TPU type x sample values file passes the strict schemas and the lint;
the train JobSet has the shape the issue asks for; goldens match; broken objects are caught."""

from __future__ import annotations

import copy

import pytest
import yaml

from core.errors import ConfigError
from k8s import lint, render, tpu_types
from k8s.config import VALUES_DIR, load_values

SAMPLE_VALUES = sorted(p.name for p in VALUES_DIR.glob("*.yaml"))
# A multi-host slice for train/batch-infer and a single-host one for serve, per TPU generation.
RETARGETS = {
    "v4": ("2x2x4", "2x2x1"),
    "v5e": ("4x4", "2x4"),
    "v5p": ("2x4x4", "2x2x1"),
    "v6e": ("4x8", "2x2"),
}


def _values(name: str, tpu_type: str):
    multi, single = RETARGETS[tpu_type]
    return load_values(
        VALUES_DIR / name,
        [
            f"tpu.type={tpu_type}",
            f"tpu.topology={multi}",
            f"serve.tpu.type={tpu_type}",
            f"serve.tpu.topology={single}",
        ],
    )


def _by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def test_sample_values_exist():
    assert {"v4-32.yaml", "dev.yaml", "multislice.yaml"} <= set(SAMPLE_VALUES)


@pytest.mark.parametrize("values_file", SAMPLE_VALUES)
@pytest.mark.parametrize("tpu_type", sorted(RETARGETS))
def test_every_workload_passes_strict_schemas_and_lint(values_file, tpu_type, schemas):
    values = _values(values_file, tpu_type)
    for workload in render.WORKLOADS:
        objects = render.render_objects(values, workload)
        assert objects, workload
        assert lint.lint(objects, schemas) == [], (values_file, tpu_type, workload)


@pytest.mark.parametrize("values_file", SAMPLE_VALUES)
def test_multi_host_serving_renders_a_leaderworkerset(values_file, schemas):
    values = load_values(
        VALUES_DIR / values_file, ["serve.tpu.type=v4", "serve.tpu.topology=2x2x4", "serve.hpa.enabled=false"]
    )
    objects = render.render_objects(values, "serve")
    assert lint.lint(objects, schemas) == []
    (lws,) = _by_kind(objects, "LeaderWorkerSet")
    assert not _by_kind(objects, "Deployment")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 4
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    assert leader["readinessProbe"]["httpGet"]["path"] == "/ready" and "readinessProbe" not in worker
    (service,) = _by_kind(objects, "Service")
    assert service["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"


def test_train_jobset_has_the_v4_32_shape():
    objects = render.render_objects(load_values(), "train")
    (jobset,) = _by_kind(objects, "JobSet")
    assert jobset["metadata"]["annotations"]["alpha.jobset.sigs.k8s.io/exclusive-topology"] == (
        "cloud.google.com/gke-nodepool"
    )
    policy = jobset["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == 10
    assert [(r["name"], r["action"], r["onJobFailureReasons"]) for r in policy["rules"]] == [
        ("fail_on_application_error", "FailJobSet", ["PodFailurePolicy"]),
        ("restart_on_preemption_or_sigterm", "RestartJobSet", ["BackoffLimitExceeded"]),
    ]
    (rjob,) = jobset["spec"]["replicatedJobs"]
    assert rjob["replicas"] == 1
    job = rjob["template"]["spec"]
    assert (job["parallelism"], job["completions"], job["completionMode"], job["backoffLimit"]) == (
        4,
        4,
        "Indexed",
        0,
    )
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "NotIn"
    assert {42, 137, 143} <= set(rule["onExitCodes"]["values"]) and 1 not in rule["onExitCodes"]["values"]
    pod = job["template"]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v4-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2x4",
    }
    assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["priorityClassName"] == "sawt-training" and spec["serviceAccountName"] == "sawt"
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["google.com/tpu"] == "4"
    assert "command" not in container  # the image's tini entrypoint stays PID 1
    assert container["args"][:4] == ["sawt", "train", "--config", "/etc/sawt/config.yaml"]
    # The run dir is a mounted path (`sawt train` refuses gs:// there); checkpoints go to checkpoint.dir.
    assert container["args"][4:6] == ["--run-dir", "/runs/qwen3-asr"]
    assert container["args"][6:-1] == [
        "load_from=/models/qwen3-omni-30b-a3b",
        "tokenizer.dir=/models/qwen3-omni-30b-a3b",
        "data.dir=/data/arrayrecord",
        "checkpoint.dir=gs://my-sawt-checkpoints/runs/qwen3-asr/checkpoints",
    ]
    runs = next(m for m in container["volumeMounts"] if m["name"] == "runs")
    assert runs == {"name": "runs", "mountPath": "/runs", "readOnly": False}
    assert container["args"][-1] == "metrics.port=9400"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    # TPU pods run as root as GKE's TPU samples do (the image's own user is 1000).
    assert "securityContext" not in container
    assert spec["securityContext"] == {"runAsUser": 0, "runAsGroup": 0}
    assert pod["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    assert pod["metadata"]["annotations"]["gke-gcsfuse/memory-limit"] == "0"
    data = next(v for v in spec["volumes"] if v["name"] == "data")
    assert data["csi"]["driver"] == "gcsfuse.csi.storage.gke.io" and data["csi"]["readOnly"] is True
    # The 64Gi memory-backed cache volume, 90% of it shared by the two read-only mounts (data, models).
    assert "file-cache:max-size-mb:29491" in data["csi"]["volumeAttributes"]["mountOptions"].split(",")
    cache = next(v for v in spec["volumes"] if v["name"] == "gke-gcsfuse-cache")
    assert cache["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert not any(v["name"] == "checkpoints" for v in spec["volumes"])  # gs:// checkpoints by default
    (config_map,) = _by_kind(objects, "ConfigMap")
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == {"base": "qwen3-omni-30b-a3b"}
    (account,) = _by_kind(objects, "ServiceAccount")
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
        ".iam.gserviceaccount.com"
    )
    assert _by_kind(objects, "PriorityClass")[0]["value"] == 500


def test_restart_exit_code_is_a_value():
    objects = render.render_objects(load_values(None, ["train.restart_exit_code=17"]), "train")
    rule = _by_kind(objects, "JobSet")[0]["spec"]["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"]
    assert rule["rules"][0]["onExitCodes"]["values"][0] == 17


@pytest.mark.parametrize(
    ("tpu_type", "topology", "chips", "hosts", "per_host", "accelerator"),
    [
        ("v4", "2x2x4", 16, 4, 4, "tpu-v4-podslice"),
        ("v4", "2x2x1", 4, 1, 4, "tpu-v4-podslice"),
        ("v5e", "2x4", 8, 1, 8, "tpu-v5-lite-podslice"),
        ("v5e", "4x4", 16, 4, 4, "tpu-v5-lite-podslice"),
        ("v5p", "4x4x4", 64, 16, 4, "tpu-v5p-slice"),
        ("v6e", "16x16", 256, 64, 4, "tpu-v6e-slice"),
    ],
)
def test_retargeting_derives_hosts_and_chips_from_the_table(
    tpu_type, topology, chips, hosts, per_host, accelerator
):
    assert tpu_types.tpu_slice(tpu_type, topology).chips == chips
    values = load_values(None, [f"tpu.type={tpu_type}", f"tpu.topology={topology}"])
    job = _by_kind(render.render_objects(values, "batch-infer"), "JobSet")[0]["spec"]["replicatedJobs"][0]
    spec = job["template"]["spec"]
    assert spec["parallelism"] == spec["completions"] == hosts
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"] == accelerator
    assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == str(per_host)


def test_unknown_topology_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"TPU v5e has no topology '2x2x4'.*known topologies: 1x1, 2x2"):
        load_values(None, ["tpu.type=v5e"])
    with pytest.raises(ConfigError, match=r"tpu.tpye: unknown key"):
        load_values(None, ["tpu.tpye=v5e"])


def test_multislice_sets_replicas_and_megascale_env():
    values = load_values(VALUES_DIR / "multislice.yaml")
    (jobset,) = _by_kind(render.render_objects(values, "train"), "JobSet")
    rjob = jobset["spec"]["replicatedJobs"][0]
    assert rjob["replicas"] == 2
    pod = rjob["template"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MEGASCALE_NUM_SLICES"]["value"] == "2"
    assert env["MEGASCALE_COORDINATOR_ADDRESS"]["value"] == "sawt-qwen3-asr-ms-slice-0-0.sawt-qwen3-asr-ms"
    assert "job-index" in env["MEGASCALE_SLICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["securityContext"] == {"runAsUser": 0, "runAsGroup": 0}  # privileged implies root
    assert pod["containers"][0]["securityContext"] == {"privileged": True}
    checkpoints = next(v for v in pod["volumes"] if v["name"] == "checkpoints")
    assert (
        "readOnly" not in checkpoints["csi"]
        and checkpoints["csi"]["volumeAttributes"]["hostNetworkPodKSA"] == "true"
    )
    assert "checkpoint.dir=/checkpoints/qwen3-asr-ms/checkpoints" in pod["containers"][0]["args"]
    assert (
        "--run-dir" in pod["containers"][0]["args"] and "/runs/qwen3-asr-ms" in pod["containers"][0]["args"]
    )


def test_tpu_security_profiles_follow_googles_references(schemas):
    """root by default (GKE's TPU samples), privileged as xpk (implies root), non-root an explicit opt-in;
    CPU pods keep the restricted profile whatever the TPU profile."""
    spec = _by_kind(render.render_objects(load_values(), "serve"), "Deployment")[0]["spec"]["template"][
        "spec"
    ]
    assert spec["securityContext"] == {"runAsUser": 0, "runAsGroup": 0}
    assert "securityContext" not in spec["containers"][0]
    objects = render.render_objects(load_values(None, ["security.tpu_profile=privileged"]), "serve")
    spec = _by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]
    assert spec["containers"][0]["securityContext"] == {"privileged": True}
    assert spec["securityContext"]["runAsUser"] == 0
    assert lint.lint(objects, schemas) == []
    objects = render.render_objects(load_values(None, ["security.tpu_profile=non-root"]), "serve")
    spec = _by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    assert spec["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert lint.lint(objects, schemas) == []
    for profile in ("root", "privileged", "non-root"):
        job = _by_kind(
            render.render_objects(load_values(None, [f"security.tpu_profile={profile}"]), "ckpt-convert"),
            "Job",
        )[0]
        assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # A privileged container that is not root is refused (xpk runs them as root; the devices need it).
    bad = _by_kind(
        render.render_objects(load_values(None, ["security.tpu_profile=privileged"]), "serve"), "Deployment"
    )
    bad[0]["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 1000
    assert any("privileged implies root" in p for p in lint.semantic_problems(bad))


def test_images_need_a_registry_unless_told_otherwise(capsys):
    from sawt.cli import main

    objects = render.render_objects(load_values(None, ["images.trainer=sawt-trainer"]), "train")
    (problem,) = lint.image_problems(objects)
    assert "'sawt-trainer' has no registry" in problem and "Docker Hub" in problem
    assert lint.image_problems(render.render_objects(load_values(), "train")) == []
    assert lint.has_registry("localhost:5000/x") and lint.has_registry("us-docker.pkg.dev/p/r/x:1")
    assert not lint.has_registry("library/ubuntu") and not lint.has_registry("sawt-server:1.0")
    assert main(["deploy", "apply", "train", "--dry-run", "--set", "images.trainer=sawt-trainer"]) == 2
    assert "has no registry" in capsys.readouterr().err
    argv = ["deploy", "apply", "train", "--dry-run", "--set", "images.trainer=sawt-trainer"]
    assert main([*argv, "--allow-unqualified-images"]) == 0
    # Plain render (what skaffold runs, rewriting the bare artifact names) does not refuse them.
    assert main(["deploy", "render", "train", "--set", "images.trainer=sawt-trainer"]) == 0
    assert main(["deploy", "render", "train", "--validate", "--set", "images.trainer=sawt-trainer"]) == 2


def test_cpu_jobs_are_indexed_and_non_root():
    objects = render.render_objects(load_values(), "data-convert")
    (job,) = _by_kind(objects, "Job")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 1
    spec = job["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and "nodeSelector" not in spec
    args = spec["containers"][0]["args"]
    assert args == [
        "sawt",
        "data",
        "convert",
        "--src",
        "/data/tfrecord",
        "--dst",
        "/data/arrayrecord",
        "--workers",
        "16",
    ]
    sharded = render.render_objects(load_values(VALUES_DIR / "multislice.yaml"), "data-convert")
    (sharded_job,) = _by_kind(sharded, "Job")
    assert sharded_job["spec"]["completions"] == sharded_job["spec"]["parallelism"] == 8
    args = sharded_job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-4:] == ["--shard-index", "$(JOB_COMPLETION_INDEX)", "--num-shards", "8"]
    # The flags exist: the real `sawt` parser accepts the pod's argv once the kubelet expands the index.
    from sawt.cli import build_parser

    parsed = build_parser().parse_args([a.replace("$(JOB_COMPLETION_INDEX)", "7") for a in args[1:]])
    assert (parsed.shard_index, parsed.num_shards) == (7, 8)
    ckpt = _by_kind(render.render_objects(load_values(), "ckpt-convert"), "Job")[0]
    assert ckpt["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "sawt",
        "convert",
        "hf-to-orbax",
        "--hf",
        "/models/hf/Qwen3-Omni-30B-A3B-Instruct",
        "--out",
        "/models/qwen3-omni-30b-a3b",
    ]
    with pytest.raises(ConfigError, match=r"ckpt_convert\.shards"):
        load_values(None, ["ckpt_convert.shards=2"])


def test_serve_deployment_probes_grace_and_hpa(schemas):
    objects = render.render_objects(load_values(None, ["serve.hpa.enabled=true"]), "serve")
    assert lint.lint(objects, schemas) == []
    (deployment,) = _by_kind(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert spec["terminationGracePeriodSeconds"] == 60
    assert spec["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x2x1"
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    (hpa,) = _by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_every_object_carries_app_labels():
    values = load_values()
    for workload in render.WORKLOADS:
        for obj in render.render_objects(values, workload):
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "sawt", obj["metadata"]["name"]
            assert labels["app.kubernetes.io/managed-by"] == "sawt-deploy"


def test_goldens_match_the_default_values():
    values = load_values()
    for workload in render.WORKLOADS:
        golden = render.golden_path(workload)
        assert golden.read_text() == render.render(values, workload), (
            f"{golden} is stale; regenerate with: .venv/bin/python -m k8s.render --goldens"
        )


def test_long_names_are_refused():
    values = load_values(None, ["train.run_name=" + "a" * 45])
    problems = lint.semantic_problems(render.render_objects(values, "train"))
    assert any("pod names like" in p and "> 63" in p for p in problems)


def test_long_lws_names_are_refused():
    values = load_values(None, ["serve.tpu.topology=2x2x4", "serve.name=" + "s" * 56])
    problems = lint.semantic_problems(render.render_objects(values, "serve"))
    assert any("LeaderWorkerSet" in p and "longer than 63" in p for p in problems), problems


def test_env_that_looks_like_a_secret_is_refused():
    with pytest.raises(ConfigError, match="HF_TOKEN: looks like a secret"):
        load_values(None, ["train.env.HF_TOKEN=abc"])


def test_metrics_port_must_avoid_tpu_runtime_ports():
    with pytest.raises(ConfigError, match="port 8471 is used by the TPU runtime"):
        load_values(None, ["metrics.port=8471"])


def _jobset(objects):
    return _by_kind(objects, "JobSet")[0]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda o: o["spec"]["replicatedJobs"][0]["template"]["spec"].update(parallelism=3), "parallelism 3"),
        (lambda o: o["spec"]["replicatedJobs"][0]["template"]["spec"].update(completions=2), "completions 2"),
        (
            lambda o: o["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0][
                "resources"
            ]["limits"].update({"google.com/tpu": "8"}),
            "host has 4 chips",
        ),
        (
            lambda o: o["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0][
                "ports"
            ].append({"name": "metrics2", "containerPort": 9400}),
            "port 9400 used twice",
        ),
        (
            lambda o: o["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0][
                "ports"
            ].append({"name": "coord", "containerPort": 8482}),
            "8482 is a TPU runtime port",
        ),
        (
            lambda o: o["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
                "nodeSelector"
            ].update({"cloud.google.com/gke-tpu-topology": "3x3x3"}),
            "no topology '3x3x3'",
        ),
        (lambda o: o["spec"]["failurePolicy"]["rules"][1].pop("name"), "'name' is a required property"),
        (lambda o: o["spec"].update(replicatedJob=[]), "'replicatedJob' was unexpected"),
        (
            lambda o: o["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][
                0
            ].update(resourcez={}),
            "'resourcez' was unexpected",
        ),
        (lambda o: o["metadata"]["labels"].pop("app.kubernetes.io/component"), "missing labels"),
        (
            lambda o: o["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][
                0
            ].update(securityContext={"privileged": True, "runAsUser": 1000}),
            "privileged implies root",
        ),
    ],
)
def test_lint_catches_broken_jobsets(mutate, expected, schemas):
    jobset = copy.deepcopy(_jobset(render.render_objects(load_values(), "train")))
    mutate(jobset)
    problems = lint.lint([jobset], schemas)
    assert any(expected in p for p in problems), problems


def test_lint_fails_kinds_without_a_schema(schemas):
    bogus = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert any("no schema for kind Widget" in p for p in lint.lint([bogus], schemas))


def test_lint_catches_core_schema_errors(schemas):
    (deployment,) = _by_kind(render.render_objects(load_values(), "serve"), "Deployment")
    deployment["spec"]["replicas"] = "two"
    assert any("'two' is not of type 'integer'" in p for p in lint.lint([deployment], schemas))
    deployment["spec"]["replicas"] = 1
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert any("imagePullPolicyy" in p for p in lint.lint([deployment], schemas))


def test_every_values_field_is_documented():
    from core.configlib import undocumented_fields
    from k8s.config import Values

    assert undocumented_fields(Values) == []


def test_tpu_table_covers_the_four_generations():
    assert set(tpu_types.TPU_TYPES) == {"v4", "v5e", "v5p", "v6e"}
    v4_32 = tpu_types.tpu_slice("v4", "2x2x4")
    assert (v4_32.name, v4_32.chips, v4_32.hosts, v4_32.chips_per_host, v4_32.machine_type) == (
        "v4-32",
        16,
        4,
        4,
        "ct4p-hightpu-4t",
    )
    assert tpu_types.tpu_slice("v5e", "4x4").name == "v5litepod-16"
    with pytest.raises(tpu_types.TopologyError, match="unknown TPU type 'v3'"):
        tpu_types.tpu_slice("v3", "2x2")


def test_a_template_that_repeats_a_key_is_a_render_error(monkeypatch):
    monkeypatch.setattr(render, "render_text", lambda values, workload: "kind: A\nmetadata: {}\nkind: B\n")
    with pytest.raises(render.RenderError, match="duplicate key 'kind'"):
        render.render_objects(load_values(), "train")


def test_batch_infer_shards_records_over_the_hosts_of_one_slice():
    values = load_values(VALUES_DIR / "multislice.yaml")  # tpu.slices=2 is for training only
    (jobset,) = _by_kind(render.render_objects(values, "batch-infer"), "JobSet")
    rjob = jobset["spec"]["replicatedJobs"][0]
    assert rjob["replicas"] == 1
    env = {e["name"]: e for e in rjob["template"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SAWT_NUM_PROCESSES"]["value"] == "4"
    assert "job-completion-index" in env["SAWT_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert not any(name.startswith("MEGASCALE") for name in env)
    args = rjob["template"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["sawt", "batch-infer"] and args[args.index("--out") + 1] == "/outputs/qwen3-asr-test"


def _tensor_parallel(container) -> int:
    args = container["args"]
    assert args.count("--tensor-parallel") == 1, args
    return int(args[args.index("--tensor-parallel") + 1])


@pytest.mark.parametrize(
    ("tpu_type", "multi", "single"),
    [("v4", "2x2x4", "2x2x1"), ("v5e", "4x4", "2x4"), ("v6e", "4x8", "2x2"), ("v5e", "4x4", "1x1")],
)
def test_serving_shards_the_weights_over_the_chips_of_a_host(tpu_type, multi, single):
    """serve (Deployment and LWS leader/worker) and batch-infer pass --tensor-parallel = chips per host."""
    values = load_values(
        None,
        [
            f"tpu.type={tpu_type}",
            f"tpu.topology={multi}",
            f"serve.tpu.type={tpu_type}",
            f"serve.tpu.topology={single}",
        ],
    )
    serve_chips = tpu_types.tpu_slice(tpu_type, single).chips_per_host
    (deployment,) = _by_kind(render.render_objects(values, "serve"), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert _tensor_parallel(container) == serve_chips
    assert container["resources"]["limits"]["google.com/tpu"] == str(serve_chips)
    (jobset,) = _by_kind(render.render_objects(values, "batch-infer"), "JobSet")
    container = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    assert _tensor_parallel(container) == tpu_types.tpu_slice(tpu_type, multi).chips_per_host
    assert container["resources"]["limits"]["google.com/tpu"] == str(_tensor_parallel(container))


def test_tensor_parallel_default_and_override():
    assert (
        _tensor_parallel(
            _by_kind(render.render_objects(load_values(), "serve"), "Deployment")[0]["spec"]["template"][
                "spec"
            ]["containers"][0]
        )
        == 4
    )  # the default v4-8 server host: the ~60 GB bf16 thinker over 4 x 32 GB chips
    lws_values = load_values(None, ["serve.tpu.topology=2x2x4", "serve.tensor_parallel=2"])
    (lws,) = _by_kind(render.render_objects(lws_values, "serve"), "LeaderWorkerSet")
    for role in ("leaderTemplate", "workerTemplate"):
        assert _tensor_parallel(lws["spec"]["leaderWorkerTemplate"][role]["spec"]["containers"][0]) == 2
    (jobset,) = _by_kind(
        render.render_objects(load_values(None, ["batch_infer.tensor_parallel=1"]), "batch-infer"),
        "JobSet",
    )
    assert (
        _tensor_parallel(
            jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
        )
        == 1
    )
    with pytest.raises(render.RenderError, match=r"serve\.tensor_parallel: 8 exceeds the 4 chips per host"):
        render.render_objects(load_values(None, ["serve.tensor_parallel=8"]), "serve")
    with pytest.raises(render.RenderError, match=r"batch_infer\.args: set batch_infer\.tensor_parallel"):
        render.render_objects(
            load_values(None, ['batch_infer.args=["--tensor-parallel", "2"]']), "batch-infer"
        )
    with pytest.raises(ConfigError, match=r"serve\.tensor_parallel"):
        load_values(None, ["serve.tensor_parallel=0"])


def test_one_values_file_is_one_pipeline():
    """ckpt-convert writes what train loads; train's run dir is on the runs mount and its checkpoints at
    checkpoint.dir; batch-infer and serve read that run (best/latest, or a pinned step, or a model dir)."""
    values = load_values()

    def args(workload, kind, *overrides):
        objects = render.render_objects(load_values(None, list(overrides)), workload)
        (obj,) = _by_kind(objects, kind)
        return next(c for _, t in lint.pod_templates(obj) for c in t["spec"]["containers"])["args"]

    convert = args("ckpt-convert", "Job")
    out = convert[convert.index("--out") + 1]
    train = args("train", "JobSet")
    assert f"load_from={out}" in train and f"tokenizer.dir={out}" in train
    data = args("data-convert", "Job")
    assert f"data.dir={data[data.index('--dst') + 1]}" in train
    run = train[train.index("--run-dir") + 1]
    assert run == f"/runs/{values.train.run_name}"
    assert args("batch-infer", "JobSet")[2:4] == ["--checkpoint", run]
    assert args("serve", "Deployment")[2:4] == ["--checkpoint", run]
    assert args("serve", "Deployment", "serve.step=1200")[3] == f"{run}/checkpoints/1200"
    assert args("batch-infer", "JobSet", "batch_infer.model=qwen3-omni-30b-a3b")[3] == out
    # The user's overrides come after the pipeline's, so they win.
    assert (
        args("train", "JobSet", "train.overrides=[load_from=/models/other]")[-2] == "load_from=/models/other"
    )
    assert "load_from" not in " ".join(args("train", "JobSet", "train.load_from=null"))


def test_serve_on_the_training_pool_is_a_leaderworkerset():
    objects = render.render_objects(load_values(None, ["serve.pool=training"]), "serve")
    (lws,) = _by_kind(objects, "LeaderWorkerSet")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 4
    spec = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    assert spec["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x2x4"
    assert lint.semantic_problems(objects) == []
