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
