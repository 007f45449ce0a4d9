"""`sawt convert orbax-to-hf`: a complete HF directory, and with --base a drop-in replacement for the release.

On the release-shaped fixture (tests/helpers/release.py): the export of its own conversion must be the
release again, byte for byte, in the release's shard layout; the thinker-only export must carry what a
loader needs besides the weights. Loading the exports in transformers is the slow suite's job
(tests/e2e/test_release_journey.py); vLLM's key expectations are checked here without vLLM.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tests.helpers.release import release_dir
from tools.hf.convert import ConversionError, hf_to_orbax, orbax_to_hf
from tools.hf.safetensors_io import INDEX_FILE, open_checkpoint, read_tensor

HF_FILES = {
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
}


def _quiet(*_):
    pass


def _raw(info) -> bytes:
    with open(info.file, "rb") as f:
        f.seek(info.offset)
        return f.read(info.nbytes)


def test_export_onto_the_base_is_the_release_again(release_checkpoint, tmp_path):
    summary = orbax_to_hf(
        release_checkpoint, tmp_path / "exp", base=release_dir(), log=_quiet, show_progress=False
    )
    assert summary["from_base"] > 0 and summary["from_checkpoint"] == 90
    exp, rel = tmp_path / "exp", release_dir()
    names = {p.name for p in exp.iterdir()}
    assert names >= HF_FILES and "tokenizer.json" not in names and "model_config.json" not in names
    assert (
        json.loads((exp / INDEX_FILE).read_text())["weight_map"]
        == json.loads((rel / INDEX_FILE).read_text())["weight_map"]
    )
    for name in sorted(p.name for p in rel.iterdir()):
        assert (exp / name).read_bytes() == (rel / name).read_bytes(), name  # nothing trained: the release


def test_export_dtype_applies_to_the_tensors_sawt_writes(release_checkpoint, tmp_path):
    orbax_to_hf(
        release_checkpoint,
        tmp_path / "exp",
        base=release_dir(),
        dtype="fp32",
        log=_quiet,
        show_progress=False,
    )
    got, want = open_checkpoint(tmp_path / "exp"), open_checkpoint(release_dir())
    assert set(got) == set(want)
    for name, info in got.items():
        if name.startswith(("talker.", "code2wav.", "thinker.visual.")):
            assert info.dtype == want[name].dtype and _raw(info) == _raw(want[name]), name
        else:
            assert info.dtype == np.float32, name
            np.testing.assert_array_equal(read_tensor(info), read_tensor(want[name]).astype(np.float32))


def test_thinker_only_export_without_base(release_checkpoint, tmp_path):
    summary = orbax_to_hf(release_checkpoint, tmp_path / "exp", log=_quiet, show_progress=False)
    exp = tmp_path / "exp"
    assert summary["from_base"] == 0 and {p.name for p in exp.iterdir()} >= HF_FILES
    config = json.loads((exp / "config.json").read_text())
    assert config["enable_audio_output"] is False  # how the release's thinker-only variants say it
    assert (
        config["thinker_config"] == json.loads((release_dir() / "config.json").read_text())["thinker_config"]
    )
    keys = set(open_checkpoint(exp))
    release_keys = set(open_checkpoint(release_dir()))
    assert keys == {
        k for k in release_keys if k.startswith("thinker.") and not k.startswith("thinker.visual.")
    }
    for name, info in open_checkpoint(exp).items():  # the source's dtypes (bf16), bit for bit
        assert info.dtype == np.dtype(ml_dtypes.bfloat16) and _raw(info) == _raw(
            open_checkpoint(release_dir())[name]
        )


def test_a_base_of_another_architecture_is_refused(release_checkpoint, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(release_dir(), other)
    config = json.loads((other / "config.json").read_text())
    config["thinker_config"]["text_config"]["num_hidden_layers"] = 3
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"text\.num_hidden_layers=3"):
        orbax_to_hf(release_checkpoint, tmp_path / "exp", base=other, log=_quiet, show_progress=False)
    assert not (tmp_path / "exp").exists()


def test_export_command_line(release_checkpoint, tmp_path):
    """The contract command, as a user runs it (a converted checkpoint stands in for a run here)."""
    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "sawt.cli", "convert", "orbax-to-hf", "--ckpt", str(release_checkpoint)]
    proc = subprocess.run(
        [*cmd, "--out", str(exp), "--base", str(release_dir())], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["tensors"] == len(open_checkpoint(release_dir()))
    again = subprocess.run(
        [*cmd, "--out", str(exp), "--base", str(release_dir())], capture_output=True, text=True
    )
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
    missing = subprocess.run(
        [*cmd, "--out", str(tmp_path / "x"), "--base", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no config.json" in missing.stderr


# ---- vLLM's loader (vllm-project/vllm, vllm/model_executor/models/qwen3_omni_moe_thinker.py) ------------
# vLLM itself does not run here (it needs a GPU or TPU build): these tests apply its weight mapping to the
# export's key set and check what its modules expect. Its thinker class maps `thinker.lm_head.` ->
# `language_model.lm_head.`, `thinker.model.` -> `language_model.model.`, `thinker.` -> `` and skips `talker.`
# and `code2wav.`; it always builds the vision tower, and its loader rejects unknown weights and (recent
# versions) weights left uninitialised. The expert weights are read per expert (FusedMoE's mapping of
# `mlp.experts.{e}.{gate,up,down}_proj.weight`).
VLLM_PREFIXES = (
    ("thinker.lm_head.", "language_model.lm_head."),
    ("thinker.model.", "language_model.model."),
    ("thinker.", ""),
)
VLLM_SKIPPED = ("talker.", "code2wav.")


def vllm_names(keys: set[str]) -> set[str]:
    out = set()
    for key in keys:
        if key.startswith(VLLM_SKIPPED):
            continue
        for old, new in VLLM_PREFIXES:
            if key.startswith(old):
                out.add(new + key[len(old) :])
                break
        else:
            raise AssertionError(f"vLLM's mapper leaves {key} unmapped")
    return out


def vllm_expected(config: dict) -> set[str]:
    """The parameters vLLM's Qwen3-Omni thinker loads, for a config.json (text and audio tower; vision by prefix)."""
    text = config["thinker_config"]["text_config"]
    audio = config["thinker_config"]["audio_config"]
    lm = "language_model.model."
    names = {f"{lm}embed_tokens.weight", f"{lm}norm.weight", "language_model.lm_head.weight"}
    for layer in range(text["num_hidden_layers"]):
        p = f"{lm}layers.{layer}."
        names |= {p + n + ".weight" for n in ("input_layernorm", "post_attention_layernorm", "mlp.gate")}
        names |= {
            f"{p}self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")
        }
        names |= {
            f"{p}mlp.experts.{e}.{n}.weight"
            for e in range(text["num_experts"])
            for n in ("gate_proj", "up_proj", "down_proj")
        }
    for layer in range(audio["encoder_layers"]):
        p = f"audio_tower.layers.{layer}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            names |= {f"{p}self_attn.{n}.weight", f"{p}self_attn.{n}.bias"}
        for n in ("self_attn_layer_norm", "final_layer_norm", "fc1", "fc2"):
            names |= {f"{p}{n}.weight", f"{p}{n}.bias"}
    for n in ("conv2d1", "conv2d2", "conv2d3", "proj1", "proj2", "ln_post"):
        names |= {f"audio_tower.{n}.weight", f"audio_tower.{n}.bias"}
    names.add("audio_tower.conv_out.weight")
    return names


def test_vllm_finds_every_weight_it_builds_in_the_base_export(release_checkpoint, tmp_path):
    orbax_to_hf(release_checkpoint, tmp_path / "exp", base=release_dir(), log=_quiet, show_progress=False)
    names = vllm_names(set(open_checkpoint(tmp_path / "exp")))
    config = json.loads((tmp_path / "exp" / "config.json").read_text())
    expected = vllm_expected(config)
    assert expected <= names
    rest = names - expected
    assert rest and all(n.startswith("visual.") for n in rest)  # the vision tower it always builds
    assert config["architectures"] == ["Qwen3OmniMoeForConditionalGeneration"]  # what its registry maps


def test_vllm_would_miss_the_vision_tower_in_a_thinker_only_export(release_checkpoint, tmp_path):
    """Documented in docs/convert.md: vLLM needs --base (it builds the vision tower whatever the input)."""
    orbax_to_hf(release_checkpoint, tmp_path / "exp", log=_quiet, show_progress=False)
    names = vllm_names(set(open_checkpoint(tmp_path / "exp")))
    config = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert names == vllm_expected(config)
    assert not any(n.startswith("visual.") for n in names)


@pytest.fixture
def base_of_several_gb(tmp_path: Path) -> tuple[Path, Path]:
    from tools.dev.synthetic_hf import write_synthetic_hf
    from trainer.config import load_experiment

    real = load_experiment("qwen3-omni-30b-a3b", []).model
    config = real.model_copy(
        update={
            "text": real.text.model_copy(update={"num_hidden_layers": 1, "num_experts": 32}),
            "audio": real.audio.model_copy(update={"encoder_layers": 1}),
        }
    )
    hf = write_synthetic_hf(
        tmp_path / "hf",
        config,
        prefix="thinker.",
        dtype="bf16",
        extra={"talker.codec_head.weight": (64, 4_000_000)},
    )
    hf_to_orbax(hf, tmp_path / "ckpt", log=_quiet, show_progress=False)
    return hf, tmp_path / "ckpt"


@pytest.mark.slow
def test_export_peak_rss_stays_bounded(base_of_several_gb, tmp_path):
    """~2.1 GB of bf16 (real widths and vocabulary, one layer, 32 experts, a 0.5 GB talker tensor to copy):
    the export process's peak RSS stays far below the checkpoint's size."""
    hf, ckpt = base_of_several_gb
    total = sum(t.nbytes for t in open_checkpoint(hf).values())
    code = (
        "import sys\n"
        "from tools.hf.convert import orbax_to_hf\n"
        "orbax_to_hf(sys.argv[1], sys.argv[2], base=sys.argv[3], log=lambda *a: None, show_progress=False)\n"
        "status = open('/proc/self/status').read()\n"
        "print(int(status.split('VmHWM:')[1].split()[0]) * 1024)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ckpt), str(tmp_path / "exp"), str(hf)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = int(proc.stdout.strip().splitlines()[-1])
    assert total > 2e9
    assert peak < 1e9, f"peak {peak / 1e9:.2f} GB for a {total / 1e9:.2f} GB export"
    got, want = open_checkpoint(tmp_path / "exp"), open_checkpoint(hf)
    assert set(got) == set(want)
    assert _raw(got["talker.codec_head.weight"]) == _raw(want["talker.codec_head.weight"])
