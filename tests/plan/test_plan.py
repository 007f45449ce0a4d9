"""`sawt plan` compiles the real train step of a small config for a v4-8 on this CPU machine (libtpu)."""

import json

from sawt.cli import main


def test_plan_tiny_v4_8(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert (
        main(["plan", "--config", "tiny", "--topology", "v4-8", "--mesh", "fsdp=4", "--json", str(out)]) == 0
    )
    plan = json.loads(out.read_text())
    assert plan["fits"] is True
    assert plan["mesh"] == {"data": 1, "fsdp": 4, "expert": 1, "tensor": 1}
    # `moe_impl: auto` is resolved for the TPU it compiles for, not for this CPU host (issue 16).
    assert plan["moe_impl"] == "ragged"
    mem = plan["memory"]
    assert mem["argument_bytes"] > 0 and mem["temp_bytes"] > 0
    assert plan["per_chip_bytes"] >= mem["argument_bytes"]
    assert plan["flops_per_step"] > 0
    assert plan["predicted_step_seconds"] > plan["predicted_step_seconds_at_peak"] > 0
    assert "fits: yes" in capsys.readouterr().out


def test_plan_rejects_unknown_topology(capsys):
    assert main(["plan", "--config", "tiny", "--topology", "v9-1"]) == 2
    assert "v4-32" in capsys.readouterr().err


def test_plan_names_a_batch_that_does_not_split_over_the_slice(capsys):
    # tiny's global batch of 8 cannot be sharded over a v4-32's 16 chips: a usage error, not a traceback.
    assert main(["plan", "--config", "tiny", "--topology", "v4-32"]) == 2
    err = capsys.readouterr().err
    assert "train.global_batch_size=8 does not split" in err
    assert "train.global_batch_size=16" in err
    assert "Traceback" not in err


def test_plan_tiny_v4_8_compiles_packed_batches(tmp_path):
    """With data.packing the plan compiles the loader's packed layout (segment ids, clip slots)."""
    out = tmp_path / "plan.json"
    args = ["plan", "--config", "tiny", "--topology", "v4-8", "--mesh", "fsdp=4", "--json", str(out)]
    assert main([*args, "data.packing=true", "data.max_clips_per_row=4"]) == 0
    plan = json.loads(out.read_text())
    assert plan["fits"] is True and plan["packing"] is True and plan["clips_per_row"] == 4


def _split(tmp_path):
    root = tmp_path / "corpus"
    assert main(["data", "synth", "--out", str(root / "tf"), "--n", "60", "--seed", "2"]) == 0
    assert (
        main(["data", "convert", "--src", str(root / "tf"), "--dst", str(root / "ar"), "--workers", "1"]) == 0
    )
    return root


def test_epoch_from_a_splits_index_packed_and_bucketed(tmp_path, capsys):
    from tools.epoch_plan import fill_from_index
    from trainer.config import load_experiment

    root = _split(tmp_path)
    out = tmp_path / "plan.json"
    tok = f"tokenizer.dir={root / 'tf' / 'tokenizer'}"
    argv = ["plan", "--config", "tiny", "--topology", "v4-8", "--index", str(root / "ar" / "train")]
    assert main([*argv, "--no-compile", "--json", str(out), tok]) == 0
    epoch = json.loads(out.read_text())["epoch"]
    assert "epoch of" in capsys.readouterr().out
    packed, bucketed = epoch["packed"], epoch["bucketed"]
    assert 0 < packed["steps"] < bucketed["steps"]
    assert packed["token_fill"] > bucketed["token_fill"]
    assert 0 < packed["seconds_at_peak"] < bucketed["seconds_at_peak"]
    assert packed["seconds_at_mfu"] == packed["seconds_at_peak"] / 0.4
    # The same figures as the real plans of epoch 0 of that split.
    stats = fill_from_index(load_experiment("tiny", [tok]), root / "ar" / "train")
    assert packed["steps"] == stats["packed"]["steps"] and bucketed["steps"] == stats["bucketed"]["steps"]


def test_epoch_from_bench_fill_scales_to_the_stated_clips(tmp_path):
    from tools.aot_plan import TOPOLOGIES
    from trainer.config import load_experiment
    from trainer.flops import train_flops_per_step

    stats = {
        "global_batch": 32,
        "buckets": [[500, 192], [3000, 704]],
        "epoch_clips": 520296,
        "packed": {"clips": 1000, "steps_per_bucket": [0, 6], "clips_per_row": 16, "token_fill": 0.97,
                   "frame_fill": 0.95},
        "bucketed": {"clips": 1000, "steps_per_bucket": [20, 5], "clips_per_row": 1, "token_fill": 0.55,
                     "frame_fill": 0.69},
    }  # fmt: skip
    fill = tmp_path / "pack.json"
    fill.write_text(json.dumps({"fill_stats": stats}))
    out = tmp_path / "plan.json"
    argv = [
        "plan",
        "--config",
        "qwen3-omni-30b-a3b",
        "--topology",
        "v4-32",
        "--fill",
        str(fill),
        "--no-compile",
    ]
    assert main([*argv, "--mfu", "0.5", "--json", str(out)]) == 0
    epoch = json.loads(out.read_text())["epoch"]
    cfg = load_experiment("qwen3-omni-30b-a3b", [])
    topo = TOPOLOGIES["v4-32"]
    scale = 520296 / 1000
    step = train_flops_per_step(cfg.model, 32, 704, 3000, cfg.train.freeze, 16)
    assert epoch["clips"] == 520296 and epoch["packed"]["steps"] == -(-6 * scale // 1)
    want = epoch["packed"]["steps"] * step / (topo.chips * topo.peak_flops)
    assert abs(epoch["packed"]["seconds_at_peak"] - want) < 1e-6 * want
    assert abs(epoch["packed"]["hours_at_mfu"] - want / 0.5 / 3600) < 1e-6 * want
    assert epoch["bucketed"]["steps"] == -(-20 * scale // 1) + -(-5 * scale // 1)
    assert main([*argv[:-1], "--json", str(out), "--index", str(tmp_path)]) == 2  # one source of fill only
