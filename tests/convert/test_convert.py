"""HF safetensors <-> model checkpoint conversion: bit-exact round trips, layouts, errors, loading."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

from sawt.cli import main as sawt_main
from tools.dev.synthetic_hf import write_synthetic_hf
from tools.hf.convert import ConversionError, hf_to_orbax, orbax_to_hf
from tools.hf.key_map import leaf_specs
from tools.hf.safetensors_io import INDEX_FILE, SINGLE_FILE, open_checkpoint, read_tensor, write_safetensors
from trainer.model.config import ModelConfig
from trainer.model_checkpoint import (
    MODEL_CONFIG_FILE,
    load_model_checkpoint,
    resolve_checkpoint,
    save_model_checkpoint,
)

CFG = ModelConfig()


def _quiet(*_):
    pass


def _all_tensors(directory: Path) -> dict[str, np.ndarray]:
    return {k: read_tensor(v) for k, v in open_checkpoint(directory).items()}


def _assert_bit_exact(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


@pytest.mark.parametrize(
    ("dtype", "prefix", "shard_bytes"),
    [
        ("bf16", "thinker.", 150_000),
        ("fp32", "", 10**12),
        ("bf16", "", 10**12),
        ("fp32", "thinker.", 300_000),
    ],
)
def test_round_trip_is_bit_exact(tmp_path, dtype, prefix, shard_bytes):
    hf = write_synthetic_hf(tmp_path / "hf", CFG, prefix=prefix, dtype=dtype, max_shard_bytes=shard_bytes)
    sharded = (hf / INDEX_FILE).exists()
    assert sharded == (shard_bytes < 10**12)
    assert (hf / SINGLE_FILE).exists() == (not sharded)
    (hf / "tokenizer.json").write_text('{"fake": true}')
    (hf / "preprocessor_config.json").write_text("{}")

    summary = hf_to_orbax(hf, tmp_path / "ckpt", log=_quiet, show_progress=False)
    assert summary["prefix"] == prefix
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json", MODEL_CONFIG_FILE):
        assert (tmp_path / "ckpt" / name).is_file(), name
    orbax_to_hf(
        tmp_path / "ckpt", tmp_path / "back", log=_quiet, show_progress=False, max_shard_bytes=shard_bytes
    )
    assert (tmp_path / "back" / INDEX_FILE).exists() == sharded
    assert (tmp_path / "back" / "tokenizer.json").read_text() == '{"fake": true}'
    _assert_bit_exact(_all_tensors(hf), _all_tensors(tmp_path / "back"))


def test_canonical_tree_matches_model_and_hf_values(tmp_path):
    from trainer.model.params import abstract_param_tree
    from trainer.model.tree import flatten, path_name

    hf = write_synthetic_hf(tmp_path / "hf", CFG, prefix="thinker.", dtype="fp32")
    hf_to_orbax(hf, tmp_path / "ckpt", log=_quiet, show_progress=False)
    config, params = load_model_checkpoint(tmp_path / "ckpt")
    assert config.text == CFG.text and config.audio == CFG.audio and config.tokens == CFG.tokens
    assert config.param_dtype == "float32"
    got = {path_name(p): leaf for p, leaf in flatten(params).items()}
    want = {path_name(p): leaf for p, leaf in flatten(abstract_param_tree(CFG)).items()}
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in want.items()}

    hf_t = _all_tensors(hf)
    t = CFG.text
    # Spot checks written out by hand (independently of the layout table).
    layer, e = 1, 3
    np.testing.assert_array_equal(
        got["model/layers/mlp/experts/gate_proj"][layer, e],
        hf_t[f"thinker.model.layers.{layer}.mlp.experts.{e}.gate_proj.weight"].T,
    )
    np.testing.assert_array_equal(
        got["model/layers/self_attn/q_proj/kernel"][layer],
        hf_t[f"thinker.model.layers.{layer}.self_attn.q_proj.weight"].T.reshape(
            t.hidden_size, t.num_attention_heads, t.head_dim
        ),
    )
    np.testing.assert_array_equal(
        got["model/layers/self_attn/o_proj/kernel"][layer].reshape(-1, t.hidden_size),
        hf_t[f"thinker.model.layers.{layer}.self_attn.o_proj.weight"].T,
    )
    np.testing.assert_array_equal(
        got["audio_tower/conv2d2/kernel"], hf_t["thinker.audio_tower.conv2d2.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(got["lm_head/kernel"], hf_t["thinker.lm_head.weight"].T)
    np.testing.assert_array_equal(
        got["model/embed_tokens/embedding"], hf_t["thinker.model.embed_tokens.weight"]
    )


def test_skips_visual_talker_code2wav_and_says_so(tmp_path, capsys):
    hf = write_synthetic_hf(tmp_path / "hf", CFG, prefix="thinker.", with_visual=True)
    extra = {
        "talker.model.layers.0.mlp.gate.weight": np.ones((4, 8), np.float32),
        "code2wav.decoder.0.weight": np.ones((3,), np.float32),
        "code2wav.decoder.1.weight": np.ones((3,), np.float32),
    }
    write_safetensors(hf / "extra", extra)
    shutil.move(hf / "extra" / SINGLE_FILE, hf / "model-extra.safetensors")
    index = {"metadata": {}, "weight_map": {}}
    for name in sorted(p.name for p in hf.glob("*.safetensors")):
        for key in open_checkpoint_file(hf / name):
            index["weight_map"][key] = name
    (hf / INDEX_FILE).write_text(json.dumps(index))
    rc = sawt_main(["convert", "hf-to-orbax", "--hf", str(hf), "--out", str(tmp_path / "ckpt")])
    assert rc == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["skipped"] == {"visual": 4, "talker": 1, "code2wav": 2}
    assert "skipping 4 visual.* tensors" in captured.err
    assert "skipping 2 code2wav.* tensors" in captured.err


def open_checkpoint_file(path: Path) -> list[str]:
    from tools.hf.safetensors_io import read_header

    return list(read_header(path)[0])


def _rewrite(hf: Path, edit) -> None:
    tensors = _all_tensors(hf)
    edit(tensors)
    for f in hf.glob("*.safetensors*"):
        f.unlink()
    write_safetensors(hf, tensors)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.pop("model.layers.1.mlp.experts.5.up_proj.weight"),
            "missing tensor model.layers.1.mlp.experts.5.up_proj.weight",
        ),
        (
            lambda t: t.update({"model.layers.9.mlp.gate.weight": np.zeros((8, 64), np.float32)}),
            "unexpected tensor model.layers.9.mlp.gate.weight",
        ),
        (
            lambda t: t.update({"audio_tower.proj1.bias": np.zeros((63,), ml_dtypes.bfloat16)}),
            "tensor audio_tower.proj1.bias has shape [63], config.json implies [64]",
        ),
    ],
    ids=["missing", "extra", "shape"],
)
def test_bad_checkpoint_fails_naming_the_tensor(tmp_path, capsys, edit, message):
    hf = write_synthetic_hf(tmp_path / "hf", CFG)
    _rewrite(hf, edit)
    with pytest.raises(ConversionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        hf_to_orbax(hf, tmp_path / "ckpt", log=_quiet, show_progress=False)
    assert not (tmp_path / "ckpt").exists()
    rc = sawt_main(["convert", "hf-to-orbax", "--hf", str(hf), "--out", str(tmp_path / "ckpt")])
    assert rc == 2
    assert message.split(" has shape")[0] in capsys.readouterr().err


def test_dimensions_come_from_config_json(tmp_path):
    """A different config.json with the same weights must be rejected, not silently reinterpreted."""
    hf = write_synthetic_hf(tmp_path / "hf", CFG)
    config = json.loads((hf / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 2
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"unexpected tensor model\.layers\.2"):
        hf_to_orbax(hf, tmp_path / "ckpt", log=_quiet, show_progress=False)


def test_dtype_cast(tmp_path):
    hf = write_synthetic_hf(tmp_path / "hf", CFG, dtype="bf16")
    hf_to_orbax(hf, tmp_path / "ckpt", "fp32", log=_quiet, show_progress=False)
    config, params = load_model_checkpoint(tmp_path / "ckpt")
    assert config.param_dtype == "float32"
    emb = params["model"]["embed_tokens"]["embedding"]
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, _all_tensors(hf)["model.embed_tokens.weight"].astype(np.float32))


def test_output_must_be_new(tmp_path):
    hf = write_synthetic_hf(tmp_path / "hf", CFG)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        hf_to_orbax(hf, tmp_path / "ckpt", log=_quiet, show_progress=False)
    assert (tmp_path / "ckpt" / "keep.txt").read_text() == "mine"


def test_load_onto_a_mesh_with_dtype(tmp_path):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    hf = write_synthetic_hf(tmp_path / "hf", CFG, dtype="bf16")
    hf_to_orbax(hf, tmp_path / "ckpt", log=_quiet, show_progress=False)
    mesh = jax.make_mesh((jax.device_count(),), ("expert",))
    spec_by_path = {s.path: s for s in leaf_specs(CFG)}

    def sharding_for(path):
        # Experts split over the mesh (E=8 is divisible by the 8 fake devices); everything else replicated.
        stacked_e = len(spec_by_path[path].stack) == 2
        return NamedSharding(mesh, P(None, "expert") if stacked_e else P())

    from trainer.model.tree import flatten, unflatten

    shardings = unflatten({p: sharding_for(p) for p in spec_by_path})
    _, params = load_model_checkpoint(tmp_path / "ckpt", dtype=np.float32, shardings=shardings)
    experts = params["model"]["layers"]["mlp"]["experts"]["down_proj"]
    assert isinstance(experts, jax.Array) and experts.dtype == np.float32
    assert experts.sharding.spec == P(None, "expert")
    assert len(experts.addressable_shards) == jax.device_count()
    _, host = load_model_checkpoint(tmp_path / "ckpt")
    for path, leaf in flatten(params).items():
        np.testing.assert_array_equal(np.asarray(leaf), flatten(host)[path].astype(np.float32))


def test_resolve_checkpoint_model_step_and_run_dirs(tmp_path):
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_model_checkpoint(tmp_path / "model", params, CFG)
    assert resolve_checkpoint(tmp_path / "model") == tmp_path / "model"
    run = tmp_path / "run" / "checkpoints"
    for step in (100, 200):
        save_model_checkpoint(run / str(step), {"w": params["w"] + step}, CFG)
    (run / "300.orbax-checkpoint-tmp-123").mkdir()  # in flight: ignored
    (run / "400").mkdir()  # no params yet: ignored
    assert resolve_checkpoint(tmp_path / "run") == run / "200"
    assert resolve_checkpoint(run) == run / "200"
    assert resolve_checkpoint(run / "100") == run / "100"
    _, loaded = load_model_checkpoint(tmp_path / "run")
    np.testing.assert_array_equal(loaded["w"], params["w"] + 200)
    # Commit-file protocol: only steps with commit_success.txt count.
    (run / "100" / "commit_success.txt").write_text("ok")
    assert resolve_checkpoint(tmp_path / "run") == run / "100"
    with pytest.raises(FileNotFoundError, match="not a model checkpoint"):
        resolve_checkpoint(tmp_path / "run" / "checkpoints" / "400")
    with pytest.raises(FileNotFoundError, match="no such"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_truncated_shard_is_reported(tmp_path):
    hf = write_synthetic_hf(tmp_path / "hf", CFG)
    path = hf / SINGLE_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor .* data offsets"):
        hf_to_orbax(hf, tmp_path / "ckpt", log=_quiet, show_progress=False)
    path.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(ValueError, match="header is not valid JSON"):
        hf_to_orbax(hf, tmp_path / "ckpt", log=_quiet, show_progress=False)


@pytest.mark.slow
def test_conversion_peak_rss_is_largest_leaf_plus_under_1gb(tmp_path):
    """Real widths and vocabulary, one layer, 32 experts (~1.6 GB bf16): a fresh process's peak RSS minus the largest leaf."""
    import subprocess
    import sys

    from tools.hf.key_map import leaf_specs
    from trainer.config import load_experiment

    real = load_experiment("qwen3-omni-30b-a3b", []).model
    config = real.model_copy(
        update={
            "text": real.text.model_copy(update={"num_hidden_layers": 1, "num_experts": 32}),
            "audio": real.audio.model_copy(update={"encoder_layers": 1}),
        }
    )
    hf = write_synthetic_hf(tmp_path / "hf", config, prefix="thinker.", dtype="bf16")
    largest = max(int(np.prod(s.shape)) * 2 for s in leaf_specs(config))
    code = (
        "import sys\n"
        "from tools.hf.convert import hf_to_orbax\n"
        "hf_to_orbax(sys.argv[1], sys.argv[2], log=lambda *a: None, show_progress=False)\n"
        # VmHWM is this process's own peak; ru_maxrss would carry over the forking parent's.
        "status = open('/proc/self/status').read()\n"
        "print(int(status.split('VmHWM:')[1].split()[0]) * 1024)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(hf), str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = int(proc.stdout.strip().splitlines()[-1])
    assert largest > 300e6
    assert peak - largest < 1e9, f"peak {peak / 1e9:.2f} GB, largest leaf {largest / 1e9:.2f} GB"


def test_export_from_a_trainer_style_ocdbt_step(tmp_path):
    """A step directory whose params Orbax wrote with its defaults (OCDBT, like the trainer) exports exactly."""
    import orbax.checkpoint as ocp

    hf = write_synthetic_hf(tmp_path / "hf", CFG, prefix="thinker.", dtype="bf16")
    hf_to_orbax(hf, tmp_path / "ckpt", log=_quiet, show_progress=False)
    _, params = load_model_checkpoint(tmp_path / "ckpt")
    step = tmp_path / "run" / "checkpoints" / "7"
    step.mkdir(parents=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(step / "params", params)
    shutil.copy(tmp_path / "ckpt" / MODEL_CONFIG_FILE, step)
    assert (step / "params" / "manifest.ocdbt").exists()
    orbax_to_hf(tmp_path / "run", tmp_path / "back", prefix="thinker.", log=_quiet, show_progress=False)
    _assert_bit_exact(_all_tensors(hf), _all_tensors(tmp_path / "back"))
