"""The user's journey on the release layout, command after command, each one's output the next one's input.

    sawt convert hf-to-orbax --hf RELEASE --out CK
    sawt data synth ... && sawt data convert ...                   (the user's Arabic data, AR)
    sawt train --config tiny --run-dir RUN load_from=CK data.dir=AR train.steps=2 checkpoint.every=2
    sawt convert orbax-to-hf --ckpt RUN --out EXP --base RELEASE
    sawt transcribe --checkpoint RUN --output json CLIP
    sawt batch-infer --checkpoint RUN --data AR --split test --out OUT
    sawt serve --checkpoint RUN --port P                          (answered through the `openai` client)

RELEASE is the release-shaped fixture (tests/helpers/release.py: a tiny full Qwen3-Omni that transformers
wrote in the published release's layout). The train command adds only a metrics port (tests never bind a
fixed port) and a non-default instruction, so that "prompts exactly as the run trained" can fail. Loading
the export in transformers needs torch (the reference venv): that part is in the slow suite, below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tests.helpers.processes import free_port, sawt_serve
from tests.helpers.release import release_dir

REPO = Path(__file__).resolve().parents[2]
INSTRUCTION = "اكتب ما تسمعه بالعربية."
TRAINED_GROUPS = ("talker.", "code2wav.", "thinker.visual.")  # what sawt does not hold


def sawt(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "sawt", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"sawt {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


@dataclass(frozen=True)
class Journey:
    ck: Path
    run: Path
    exp: Path
    clip: Path
    data: Path


@pytest.fixture(scope="module")
def journey(tmp_path_factory) -> Journey:
    root = tmp_path_factory.mktemp("journey")
    ck, run, exp, clip = root / "ck", root / "run", root / "exp", root / "clip.wav"
    sawt("convert", "hf-to-orbax", "--hf", str(release_dir()), "--out", str(ck))
    sawt("data", "synth", "--out", str(root / "tf"), "--n", "24", "--seed", "5")
    sawt("data", "convert", "--src", str(root / "tf"), "--dst", str(root / "ar"), "--workers", "1")
    sawt(
        "train", "--config", "tiny", "--run-dir", str(run), f"load_from={ck}", f"data.dir={root / 'ar'}",
        "train.steps=2", "checkpoint.every=2", f"metrics.port={free_port()}", f"data.instruction={INSTRUCTION}",
    )  # fmt: skip
    sawt("convert", "orbax-to-hf", "--ckpt", str(run), "--out", str(exp), "--base", str(release_dir()))
    subprocess.run(["espeak-ng", "-v", "ar", "-w", str(clip), "صباح الخير يا أصدقائي"], check=True)
    return Journey(ck, run, exp, clip, root / "ar")


def test_the_run_directory_describes_itself(journey):
    files = journey.run / "model"
    names = {p.name for p in files.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json"} <= names
    assert "tokenizer.json" not in names  # the release's tokenizer, as shipped
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "chat_template.json"):
        assert (files / name).read_bytes() == (release_dir() / name).read_bytes(), name
    prompt = json.loads((files / "prompt.json").read_text())
    assert prompt["instruction"] == INSTRUCTION and INSTRUCTION in prompt["rendered"]
    assert json.loads((files / "transcripts.json").read_text())["tokens_per_second"] > 1.0
    config = json.loads((journey.run / "checkpoints" / "2" / "model_config.json").read_text())
    assert config["text"]["vocab_size"] == 152064 and config["tokens"]["audio_token_id"] == 151675


def _raw(info) -> bytes:
    with open(info.file, "rb") as f:
        f.seek(info.offset)
        return f.read(info.nbytes)


def test_the_export_is_a_drop_in_release(journey):
    from tools.hf.convert import THINKER_PREFIX
    from tools.hf.key_map import leaf_specs
    from tools.hf.safetensors_io import INDEX_FILE, open_checkpoint, read_tensor
    from trainer.model.tree import flatten
    from trainer.model_checkpoint import load_model_checkpoint

    got, base = open_checkpoint(journey.exp), open_checkpoint(release_dir())
    assert set(got) == set(base)
    index = json.loads((journey.exp / INDEX_FILE).read_text())["weight_map"]
    assert index == json.loads((release_dir() / INDEX_FILE).read_text())["weight_map"]
    assert (journey.exp / "config.json").read_bytes() == (release_dir() / "config.json").read_bytes()
    untrained = [k for k in base if k.startswith(TRAINED_GROUPS)]
    assert len(untrained) > 200
    for key in untrained:
        assert got[key].dtype == base[key].dtype and _raw(got[key]) == _raw(base[key]), key
    # The trained tensors are the run's parameters (fp32) in the release's dtype (bf16).
    config, params = load_model_checkpoint(journey.run)
    flat = flatten(params)
    changed = 0
    for spec in leaf_specs(config):
        leaf = np.asarray(flat[spec.path])
        for idx, key in spec.hf_keys():
            want = spec.to_hf(leaf[idx]).astype(ml_dtypes.bfloat16)
            have = read_tensor(got[THINKER_PREFIX + key])
            assert have.dtype == want.dtype and have.tobytes() == want.tobytes(), key
            changed += have.tobytes() != _raw(base[THINKER_PREFIX + key])
    assert changed > 10  # training moved the weights


def test_transcribe_prompts_exactly_as_the_run_trained(journey):
    from trainer.data.audio import log_mel
    from trainer.data.audio_io import decode_audio
    from trainer.data.text import asr_prompt_ids, load_tokenizer
    from trainer.model.geometry import encoder_token_count

    out = sawt("transcribe", "--checkpoint", str(journey.run), "--output", "json", str(journey.clip))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"file", "text", "token_ids", "prompt_token_ids"} <= set(result)
    tok = load_tokenizer(journey.run / "model")
    frames = log_mel(decode_audio(journey.clip)).shape[1]
    assert result["prompt_token_ids"] == asr_prompt_ids(tok, int(encoder_token_count(frames)), INSTRUCTION)
    # The length budget follows the clip: a couple of seconds get a few dozen tokens, not the cap of 448.
    assert len(result["token_ids"]) <= result["windows"][0]["max_new_tokens"] < 100


def test_batch_infer_reads_the_run_alone(journey, tmp_path):
    from trainer.data.shards import find_shards, shard_records

    out = tmp_path / "out"
    proc = sawt("batch-infer", "--checkpoint", str(journey.run), "--data", str(journey.data), "--split", "test",
                "--out", str(out))  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == len(shard_records(find_shards(journey.data, "test"), 0, 1)) > 0
    # The run's best (here: only) step, prompted with the run's instruction and the run's transcript rate.
    step = journey.run / "checkpoints" / "2"
    assert f"serving {step} (resolved from {journey.run}) with instruction {INSTRUCTION!r}" in proc.stderr
    assert f"tokens/s of audio ({journey.run / 'model' / 'transcripts.json'} (" in proc.stderr


def test_serve_answers_the_openai_client_with_the_run_prompt(journey):
    import openai

    transcribed = json.loads(
        sawt(
            "transcribe", "--checkpoint", str(journey.run), "--output", "json", str(journey.clip)
        ).stdout.splitlines()[-1]
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    with sawt_serve(["--checkpoint", str(journey.run)], env=env, cwd=REPO, timeout=600) as (url, proc):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with open(journey.clip, "rb") as f:
            answer = client.audio.transcriptions.create(model="sawt-asr", file=("clip.wav", f, "audio/wav"))
        # Greedy decoding of the same prompt: the server's prompt is the run's, as transcribe's is.
        assert answer.text == transcribed["text"].strip()
    log = proc.stdout.read()
    assert f"with instruction {INSTRUCTION!r}" in log


# ---- transformers on the export (torch runs only in the reference venv) -------------------------------


def _load_in_transformers(export: Path, out: Path) -> tuple[dict, np.ndarray]:
    python = REPO / ".venv-ref" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: `make test-slow` builds the reference venv")
    cmd = [str(python), str(REPO / "tools/dev/hf_reference/load_export.py"), str(export)]
    cmd += ["--reference", str(REPO / "tests/goldens/release/reference.npz"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "report.json").read_text()), np.load(out / "logits.npy")


def _sawt_logits(export: Path, tmp: Path) -> np.ndarray:
    from flax import nnx

    from tests.helpers.release import reference_batch
    from tools.hf.convert import hf_to_orbax
    from trainer.model.params import load_param_tree
    from trainer.model.thinker import Thinker
    from trainer.model_checkpoint import load_model_checkpoint

    hf_to_orbax(export, tmp, dtype="fp32", log=lambda *_: None, show_progress=False)
    config, params = load_model_checkpoint(tmp)
    model = Thinker(config, rngs=nnx.Rngs(0))
    load_param_tree(model, params)
    return np.asarray(nnx.jit(lambda m, b: m(b))(model, reference_batch()).logits)


@pytest.mark.slow
def test_transformers_loads_the_export_and_agrees_with_sawt(journey, tmp_path):
    report, hf_logits = _load_in_transformers(journey.exp, tmp_path / "hf")
    assert report["class"] == "Qwen3OmniMoeForConditionalGeneration" and report["has_talker"]
    assert (
        report["missing_keys"] == [] and report["unexpected_keys"] == [] and report["mismatched_keys"] == []
    )
    ours = _sawt_logits(journey.exp, tmp_path / "ck")
    mask = np.load(REPO / "tests/goldens/release/reference.npz")["attention_mask"].astype(bool)
    assert hf_logits[mask].std() > 0.5
    assert float(np.max(np.abs(hf_logits[mask] - ours[mask]))) <= 1e-4


@pytest.mark.slow
def test_transformers_loads_the_thinker_only_export(journey, tmp_path):
    sawt("convert", "orbax-to-hf", "--ckpt", str(journey.run), "--out", str(tmp_path / "exp"))
    report, hf_logits = _load_in_transformers(tmp_path / "exp", tmp_path / "hf")
    assert not report["has_talker"]  # enable_audio_output false: the thinker alone
    assert report["unexpected_keys"] == [] and report["missing_keys"]
    assert all(".visual." in k or k.startswith("thinker.visual") for k in report["missing_keys"])
    ours = _sawt_logits(tmp_path / "exp", tmp_path / "ck")
    mask = np.load(REPO / "tests/goldens/release/reference.npz")["attention_mask"].astype(bool)
    assert float(np.max(np.abs(hf_logits[mask] - ours[mask]))) <= 1e-4
