"""Synthetic HF Qwen3-Omni thinker checkpoints: real key names and shapes, random weights, any size.

For tests (tiny) and the conversion-memory benchmark (several GB: real hidden sizes, fewer layers). Tensors
are generated and written one at a time, so making a big checkpoint needs little memory.

    python -m tools.dev.synthetic_hf --out /tmp/hf --preset tiny [--prefix thinker.] [--dtype bf16] [--with-visual]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ml_dtypes
import numpy as np

from tools.hf.config import hf_config_dict
from tools.hf.key_map import leaf_specs
from tools.hf.safetensors_io import DEFAULT_MAX_SHARD_BYTES, PlannedTensor, ShardedWriter

DTYPES = {"bf16": np.dtype(ml_dtypes.bfloat16), "fp32": np.dtype(np.float32)}


def visual_tensors(width: int = 32) -> list[tuple[str, tuple[int, ...]]]:
    """A few `visual.*` tensors (the converter must skip them); not the real vision tower."""
    return [
        ("visual.patch_embed.proj.weight", (width, 3, 2, 4, 4)),
        ("visual.blocks.0.attn.qkv.weight", (3 * width, width)),
        ("visual.blocks.0.attn.qkv.bias", (3 * width,)),
        ("visual.merger.ln_q.weight", (width,)),
    ]


def write_synthetic_hf(
    out: str | Path,
    config,
    *,
    prefix: str = "",
    dtype: str = "bf16",
    with_visual: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    seed: int = 0,
    scale: float = 0.05,
    extra: dict[str, tuple[int, ...]] | None = None,
) -> Path:
    """Writes config.json and safetensors shards (index when several) for ``config``; returns ``out``.

    ``extra``: more tensors by full name and shape (e.g. a `talker.*` one an export must copy unchanged).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = DTYPES[dtype]
    shapes = [(prefix + key, spec.hf_shape) for spec in leaf_specs(config) for _, key in spec.hf_keys()]
    if with_visual:
        shapes += [(prefix + k, s) for k, s in visual_tensors()]
    shapes += list((extra or {}).items())
    writer = ShardedWriter(out, [PlannedTensor(k, np_dtype, s) for k, s in shapes], max_shard_bytes)
    rng = np.random.default_rng(seed)
    for key, shape in shapes:
        values = rng.standard_normal(shape, dtype=np.float32) * scale
        if key.endswith(("norm.weight", "layernorm.weight", "ln_post.weight", "ln_q.weight")):
            values += 1.0  # norms near 1, as trained models have
        writer.write(key, values.astype(np_dtype))
        del values
    writer.close()
    config_dict = hf_config_dict(config, wrapped=prefix == "thinker.")
    (out / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="tiny", help="trainer model preset (tiny, small, ...)")
    parser.add_argument("--prefix", default="", help="key prefix, e.g. 'thinker.'")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--with-visual", action="store_true")
    args = parser.parse_args(argv)
    from trainer.config import load_experiment

    config = load_experiment(args.preset, []).model
    write_synthetic_hf(args.out, config, prefix=args.prefix, dtype=args.dtype, with_visual=args.with_visual)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
