"""The rendered workloads run as their pods would: data-convert -> ckpt-convert -> train (4 hosts) ->
batch-infer (4 hosts) -> serve, from one values file, with each pod's exact container args and env.

This stands in for the cluster, which cannot run here: tests/helpers/standin_cluster.py expands each rendered
object as the JobSet and Job controllers and the GKE TPU webhook would (child Jobs, pod hostnames and
subdomain, JOB_COMPLETION_INDEX, TPU_WORKER_ID, TPU_WORKER_HOSTNAMES, the downward API) and runs every pod's
container as a local process: volume mounts are local directories (one per bucket, shared as a bucket is),
gs:// is the GCS emulator, the pods' DNS names are 127.0.0.1 and declared ports are remapped; a TPU host's
chips are fake CPU devices. The manifests change only through values (the train config and overrides, small
batch and token limits). Inputs: the demo data (`sawt data synth`, a few dozen clips) and the release-shaped
tiny Qwen3-Omni checkpoint (tests/helpers/release.py).

The train JobSet is also put through its failure policy with the pods' real exit codes: SIGTERM to every
pod (a preemption: the trainer saves and exits 42) and kill -9 of one host both restart the JobSet, which then
resumes from its gs:// checkpoint; an application error (a crash: the trainer's own usage error) fails it.

`make pipeline-local` runs the full test and prints what each workload did; the default suite runs
`test_expansion_and_failure_policy_of_the_rendered_workloads` (no model processes).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers.gcs import gcs_emulator, gcs_files, pointed_at
from helpers.standin_cluster import (
    Exit,
    LocalNode,
    expand,
    free_port,
    job_outcome,
    jobset_step,
    snapshot,
    stop,
)

from k8s import lint, render
from k8s.config import load_values

REPO = Path(__file__).resolve().parents[2]
RELEASE_SRC = "hf/Qwen3-Omni-30B-A3B-Instruct"


def _values(coordinator_port: int, *extra: str):
    """The default values file, made small enough for two CPU cores through values only."""
    overrides = [
        "train.config={base: tiny}",
        "train.overrides=["
        + ",".join(
            [
                "train.steps=6",
                "train.global_batch_size=16",
                "checkpoint.every=2",
                "checkpoint.keep_last=2",
                "eval.max_batches=1",
                "eval.max_new_tokens=8",
                "optimizer.warmup_steps=1",
                "optimizer.learning_rate=0.003",
                "data.num_threads=1",
                "distributed.heartbeat_timeout_seconds=10",
                f"distributed.coordinator_port={coordinator_port}",
            ]
        )
        + "]",
        "data_convert.args=[--workers, '1']",
        "batch_infer.args=[--max-batch, '2']",
        # The tiny release has 2 attention heads: one chip per server process, not the host's 4.
        "batch_infer.tensor_parallel=1",
        "serve.tensor_parallel=1",
        "serve.args=[--max-batch, '2', --window-s, '4', --overlap-s, '1']",
        *extra,
    ]
    return load_values(None, overrides)


def _one(objects, kind):
    return next(o for o in objects if o["kind"] == kind)


def _say(line: str) -> None:
    print(f"[pipeline] {line}", flush=True)


def test_expansion_and_failure_policy_of_the_rendered_workloads():
    """What the controllers and the TPU webhook make of the default train and batch-infer JobSets, and how the
    rendered failure policies route exit codes (no processes: the default suite's part)."""
    values = load_values()
    train = render.render_objects(values, "train")
    jobset = _one(train, "JobSet")
    pods = expand(jobset, "train")
    assert [p.hostname for p in pods] == [f"sawt-qwen3-asr-slice-0-{i}" for i in range(4)]
    assert {p.subdomain for p in pods} == {"sawt-qwen3-asr"}
    hosts = ",".join(f"sawt-qwen3-asr-slice-0-{i}.sawt-qwen3-asr" for i in range(4))
    for i, pod in enumerate(pods):
        env = pod.env()
        assert env["TPU_WORKER_ID"] == str(i) and env["TPU_WORKER_HOSTNAMES"] == hosts
        assert env["JOB_COMPLETION_INDEX"] == str(i)
        assert pod.labels["jobset.sigs.k8s.io/jobset-name"] == "sawt-qwen3-asr"
        assert pod.tpu_chips == 4
        # The trainer's coordinator, as it derives it from that environment (trainer/tpu_env.py).
        from trainer.tpu_env import distributed_args

        args = distributed_args(env)
        assert (args.coordinator_address, args.num_processes, args.process_id) == (
            "sawt-qwen3-asr-slice-0-0.sawt-qwen3-asr:8482",
            4,
            i,
        )
    assert pods[0].args()[4:6] == ["--run-dir", "/runs/qwen3-asr"]
    batch = expand(_one(render.render_objects(values, "batch-infer"), "JobSet"), "batch-infer")
    assert [p.env()["SAWT_PROCESS_ID"] for p in batch] == ["0", "1", "2", "3"]
    assert {p.env()["SAWT_NUM_PROCESSES"] for p in batch} == {"4"}
    convert = expand(_one(render.render_objects(values, "data-convert"), "Job"), "data-convert")
    assert [p.env()["JOB_COMPLETION_INDEX"] for p in convert] == ["0"] and "TPU_WORKER_ID" not in convert[
        0
    ].env()
    shards = load_values(None, ["data_convert.shards=3", "data_convert.parallelism=3"])
    pods3 = expand(_one(render.render_objects(shards, "data-convert"), "Job"), "data-convert")
    shard = [p.args()[p.args().index("--shard-index") + 1] for p in pods3]
    assert shard == ["0", "1", "2"]  # --shard-index $(JOB_COMPLETION_INDEX), expanded per pod

    # Exit codes through podFailurePolicy + backoffLimit 0 + the JobSet failurePolicy.
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    spec = jobset["spec"]

    def route(*codes):
        exits = [Exit(float(t), f"p{t}", c) for t, c in enumerate(codes)]
        state, reason = job_outcome(job, exits, "trainer")
        return (state, reason, *jobset_step(spec, reason, restarts=0)) if state == "Failed" else (state,)

    assert route(0, 0, 0, 0) == ("Complete",)
    assert route(42, 42, 42, 42) == (
        "Failed",
        "BackoffLimitExceeded",
        "restart",
        "restart_on_preemption_or_sigterm",
    )
    assert route(137, 1, 1, 1) == (
        "Failed",
        "BackoffLimitExceeded",
        "restart",
        "restart_on_preemption_or_sigterm",
    )
    assert route(143) == ("Failed", "BackoffLimitExceeded", "restart", "restart_on_preemption_or_sigterm")
    assert route(1, 137) == ("Failed", "PodFailurePolicy", "fail", "fail_on_application_error")
    assert route(2) == ("Failed", "PodFailurePolicy", "fail", "fail_on_application_error")
    assert route(3) == ("Failed", "PodFailurePolicy", "fail", "fail_on_application_error")  # non-finite stop
    assert jobset_step(spec, "BackoffLimitExceeded", restarts=values.train.max_restarts)[0] == "fail"


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _metrics_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if '"loss"' in line]
    return max(steps, default=0)


def _show(running, tail=15):
    for r in running:
        _say(f"  {r.pod.name}: exit {r.exit.code if r.exit else None}")
        for line in r.output().splitlines()[-tail:]:
            print(f"      {line}")


@pytest.mark.slow
def test_rendered_pods_run_as_one_pipeline(tmp_path):
    from helpers.release import release_dir

    with gcs_emulator("my-sawt-checkpoints") as gcs, pointed_at(gcs):
        values = _values(free_port())
        objects = {
            w: render.render_objects(values, w)
            for w in ("data-convert", "ckpt-convert", "train", "batch-infer", "serve")
        }
        for workload, objs in objects.items():
            assert lint.lint(objs) == [], workload  # what a cluster would admit
        node = LocalNode(tmp_path / "node", [o for objs in objects.values() for o in objs], gcs.env)
        data, models = node.bucket_dir("my-sawt-data"), node.bucket_dir("my-sawt-models")
        runs, outputs = node.bucket_dir("my-sawt-runs"), node.bucket_dir("my-sawt-outputs")

        # Inputs: the demo corpus as TFRecords in the data bucket, the release in the models bucket.
        synth = subprocess.run(
            [sys.executable, "-m", "sawt", "data", "synth", "--out", str(data / "tfrecord"), "--n", "48", "--seed", "3", "--workers", "2"],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert synth.returncode == 0, synth.stderr
        shutil.copytree(release_dir(), models / RELEASE_SRC)
        _say(
            f"inputs: 48 synthesized clips in gs://my-sawt-data/tfrecord, the release at /models/{RELEASE_SRC}"
        )

        # 1. data-convert, 2. ckpt-convert: CPU Jobs.
        for workload in ("data-convert", "ckpt-convert"):
            pods = expand(_one(objects[workload], "Job"), workload)
            job = _one(objects[workload], "Job")["spec"]
            done = node.run_job(pods, timeout=1200)
            _show(done, tail=3)
            assert job_outcome(job, [r.exit for r in done], "convert") == ("Complete", ""), [
                r.output() for r in done
            ]
            _say(f"{workload}: {len(pods)} pod(s) `{' '.join(pods[0].args()[:6])} ...` -> Complete")
        assert (data / "arrayrecord" / "train").is_dir() and (
            models / "qwen3-omni-30b-a3b" / "params"
        ).is_dir()

        # 3. train: one JobSet, 4 pods joined over 127.0.0.1. SIGTERM (preemption) once, kill -9 once.
        jobset = _one(objects["train"], "JobSet")
        job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
        run_dir = runs / values.train.run_name
        models_before = snapshot(models)
        attempts = []
        for attempt, disruption in enumerate(("sigterm", "kill", None)):
            pods = expand(jobset, "train", restart_attempt=attempt)
            start_step = _metrics_step(run_dir)
            acted = []

            def disrupt(running, disruption=disruption, start_step=start_step, acted=acted):
                if disruption and not acted and _metrics_step(run_dir) >= start_step + 2:
                    acted.append(True)
                    if disruption == "sigterm":  # node preemption: the kubelet SIGTERMs every pod
                        for r in running:
                            r.process.send_signal(signal.SIGTERM)
                    else:
                        running[2].process.kill()

            done = node.run_job(pods, timeout=2400, on_tick=disrupt)
            exits = [r.exit for r in done]
            state, reason = job_outcome(job, exits, "trainer")
            step = jobset_step(jobset["spec"], reason, attempt) if state == "Failed" else ("complete", "")
            attempts.append((disruption, sorted(e.code for e in exits), state, reason, step))
            _say(f"train attempt {attempt} ({disruption or 'undisturbed'}): exits {attempts[-1][1]} -> Job {state} "
                 f"{reason} -> JobSet {step[0]} ({step[1]})")  # fmt: skip
            _show(done, tail=4)
            if step[0] != "restart":
                break
        assert [a[4][0] for a in attempts] == ["restart", "restart", "complete"], attempts
        assert attempts[0][1] == [42, 42, 42, 42]  # every host saved and asked for a restart
        assert 137 in attempts[1][1]
        assert snapshot(models) == models_before  # the read-only models mount was not written
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["final_step"] == 6
        checkpoints = values.storage.checkpoints.checkpoint_dir(values.train.run_name)
        committed = {
            f.split("/")[-2]
            for f in gcs_files(gcs, checkpoints.split("/", 3)[3])
            if f.endswith("/commit_success.txt") and f.count("/") == 5
        }
        assert "6" in committed, committed
        assert not (run_dir / "checkpoints").exists()  # checkpoints on gs://, the run dir holds the rest
        _say(
            f"train: final step {summary['final_step']}, checkpoints {sorted(committed, key=int)} at {checkpoints}"
        )

        # 4. batch-infer: 4 pods over the test split, reading the fine-tuned run.
        batch_jobset = _one(objects["batch-infer"], "JobSet")
        pods = expand(batch_jobset, "batch-infer")
        done = node.run_job(pods, timeout=2400)
        _show(done, tail=3)
        assert [r.exit.code for r in done] == [0, 0, 0, 0]
        report = json.loads((outputs / values.batch_infer.out / "report.json").read_text())
        assert report["samples"] > 0
        logs = "\n".join(r.output() for r in done)
        assert f"{checkpoints}/6" in logs or f"{checkpoints}/4" in logs, logs[-3000:]
        _say(f"batch-infer: {report['samples']} clips, WER {report['overall']['wer']:.3f}")

        # 5. serve: the Deployment's pod, answering the official openai client with the fine-tuned run.
        (pod,) = expand(_one(objects["serve"], "Deployment"), "serve")
        server = node.start(pod, [pod])
        try:
            url = f"http://127.0.0.1:{server.ports[values.serve.port]}"

            def ready():
                assert server.poll() is None, server.output()
                try:
                    return httpx.get(url + "/ready", timeout=2).status_code == 200
                except httpx.TransportError:
                    return False

            _wait(ready, 900, "the server's /ready")
            import openai
            from helpers.serving import wav_bytes

            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            clip = next((data / "tfrecord").rglob("*.tfrecord"))  # any audio will do: check it answers
            assert clip
            out = client.audio.transcriptions.create(
                model="sawt-asr", file=("a.wav", wav_bytes(2.0), "audio/wav")
            )
            assert isinstance(out.text, str)
            assert checkpoints in server.output()
            _say(f"serve: /ready, transcription {out.text!r} from the run at {checkpoints}")
        finally:
            stop([server])
        assert server.exit.code == 0, server.output()[-2000:]

        # The crash: an application error fails the JobSet instead of restarting it.
        crash_values = _values(free_port(), "train.run_name=crash", "train.data=missing")
        crash_objects = render.render_objects(crash_values, "train")
        node.add_objects(crash_objects)  # its own ConfigMap (the train config), as kubectl apply would add it
        crash = _one(crash_objects, "JobSet")
        done = node.run_job(expand(crash, "train"), timeout=900)
        exits = [r.exit for r in done]
        state, reason = job_outcome(crash["spec"]["replicatedJobs"][0]["template"]["spec"], exits, "trainer")
        assert (state, reason) == ("Failed", "PodFailurePolicy"), [r.output()[-500:] for r in done]
        assert jobset_step(crash["spec"], reason, 0) == ("fail", "fail_on_application_error")
        _say(f"crash: exits {sorted(e.code for e in exits)} -> Job Failed PodFailurePolicy -> JobSet fails")
