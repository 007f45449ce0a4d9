"""Prometheus metrics: served over HTTP and parsed with prometheus_client's own parser."""

import json
import socket
import urllib.request
from pathlib import Path

from helpers.metric_names import TRAINER_METRICS
from prometheus_client.parser import text_string_to_metric_families
from train import standin

from core.fileio import read_jsonl
from trainer.config import load_experiment
from trainer.metrics import TrainMetrics
from trainer.train import run

# Counters by family name: the parser drops the _total suffix.
TRAINER_FAMILIES = {name.removesuffix("_total") for name in TRAINER_METRICS}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family, **labels):
    for sample in family.samples:
        if all(sample.labels.get(k) == v for k, v in labels.items()) and not sample.name.endswith(
            ("_created", "_bucket")
        ):
            return sample.value
    raise KeyError(labels)


def test_metrics_served_and_parsed():
    port = _free_port()
    m = TrainMetrics(process_index=3)
    m.serve(port)
    m.record_step(
        {
            "step": 7,
            "step_seconds": 0.5,
            "data_wait_seconds": 0.01,
            "loss": 2.5,
            "grad_norm": 1.25,
            "learning_rate": 1e-4,
            "tokens_per_second": 100.0,
            "samples_per_second": 4.0,
            "audio_seconds_per_second": 20.0,
            "mfu": 0.3,
            "expert_load": [0.5, 0.25, 0.25],
            "expert_load_min": 0.25,
            "expert_load_max": 0.5,
            "finite": False,
            "memory_in_use_bytes": 1000,
            "memory_peak_bytes": 2000,
        }
    )
    m.record_checkpoint(7, 1.5)
    m.record_eval({"overall": {"wer": 0.4, "cer": 0.2}, "per_source": {"synth": {"wer": 0.5, "cer": 0.25}}})
    m.record_bad_records({"crc": 2})
    m.record_bad_records({"crc": 3, "text_too_long": 1})
    m.resumes.labels("3").inc()
    families = _scrape(port)
    assert set(families) >= TRAINER_FAMILIES
    assert _value(families["sawt_train_step"], process="3") == 7
    assert _value(families["sawt_train_loss"], process="3") == 2.5
    assert _value(families["sawt_train_expert_load_ratio"], process="3", expert="0") == 0.5
    assert _value(families["sawt_train_eval_wer_ratio"], process="3", source="synth") == 0.5
    assert _value(families["sawt_train_eval_wer_ratio"], process="3", source="all") == 0.4
    assert _value(families["sawt_train_bad_records"], process="3", reason="crc") == 3
    assert _value(families["sawt_train_nonfinite_skips"], process="3") == 1
    assert _value(families["sawt_train_device_memory_bytes"], process="3", kind="peak") == 2000
    assert families["sawt_train_step_time_seconds"].type == "histogram"


def test_training_run_exposes_metrics_and_writes_jsonl(tmp_path: Path):
    port = _free_port()
    cfg = load_experiment(
        "tiny",
        [
            "train.steps=3",
            "train.global_batch_size=8",
            f"metrics.port={port}",
            "checkpoint.every=2",
            "eval.max_batches=1",
            "metrics.cpu_peak_flops=1e9",
        ],
    )
    backend = standin.backend(cfg)
    backend.flops_per_step = lambda shapes: 1e6
    assert run(cfg, tmp_path, backend) == 0
    families = _scrape(port)
    assert _value(families["sawt_train_step"], process="0") == 3
    assert _value(families["sawt_train_checkpoint_last_step"], process="0") == 3
    assert _value(families["sawt_train_mfu_ratio"], process="0") > 0
    assert 0 <= _value(families["sawt_train_eval_wer_ratio"], process="0", source="standin") <= 1
    records = list(read_jsonl(tmp_path / "metrics.jsonl"))
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(len(r["expert_load"]) == standin.E for r in steps)
    assert any(r.get("event") == "eval" for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_step"] == 3 and len(summary["params_sha256"]) == 64
