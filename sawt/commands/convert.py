"""`sawt convert`: HF safetensors <-> model checkpoint (Orbax) conversion."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert",
        help="convert HF safetensors to a model checkpoint and back",
        description="Convert between a Hugging Face checkpoint directory (what save_pretrained writes) and "
        "a model checkpoint (model_config.json + Orbax params/ + tokenizer files), which the trainer and the "
        "server load. Both directions stream one stacked tensor at a time. See docs/convert.md.",
    )
    conv = parser.add_subparsers(dest="convert_command", metavar="DIRECTION", required=True)

    to_orbax = conv.add_parser(
        "hf-to-orbax",
        help="HF safetensors -> model checkpoint",
        description="Read an HF Qwen3-Omni (thinker) checkpoint: config.json plus model.safetensors or shards "
        "with model.safetensors.index.json, keys with or without the 'thinker.' prefix. Stack per-layer and "
        "per-expert tensors into the canonical parameter tree and write OUT/params (Orbax), "
        "OUT/model_config.json, and copy the tokenizer, processor and config files. visual.*, talker.* and "
        "code2wav.* tensors are skipped (and counted). A missing or unexpected tensor, or a shape that "
        "config.json does not imply, stops the conversion before anything is written, naming the tensor.",
    )
    to_orbax.add_argument("--hf", required=True, metavar="DIR", help="the HF checkpoint directory")
    to_orbax.add_argument(
        "--out", required=True, metavar="DIR", help="model checkpoint to create (new or empty)"
    )
    to_orbax.add_argument(
        "--dtype",
        choices=("bf16", "fp32"),
        default=None,
        help="cast the weights; default: keep the stored dtype (bit-exact)",
    )
    to_orbax.add_argument("--quiet", action="store_true", help="print only the JSON summary")
    to_orbax.set_defaults(func=_run)

    to_hf = conv.add_parser(
        "orbax-to-hf",
        help="model checkpoint -> HF release directory (transformers, vLLM)",
        description="Export a model checkpoint, a trainer step directory, or a trainer run directory (its "
        "best step by validation WER, else its latest complete step) as a complete HF directory: sharded "
        "safetensors with model.safetensors.index.json and the original key names, config.json, the "
        "tokenizer files, chat template, preprocessor_config.json and generation_config.json. With --base "
        "RELEASE the export is a drop-in replacement for that release: its config.json and shard layout, "
        "every tensor sawt does not hold (thinker.visual.*, talker.*, code2wav.*) copied byte for byte, the "
        "fine-tuned ones in the release's dtypes. Without --base: the thinker alone "
        "(enable_audio_output false; see docs/convert.md for what loaders need). Streams one leaf at a "
        "time. HF -> Orbax -> HF is bit-exact.",
        epilog="example:\n  sawt convert orbax-to-hf --ckpt runs/ar-asr --out /models/ar-asr-hf "
        "--base /models/Qwen3-Omni-30B-A3B-Instruct",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    to_hf.add_argument("--ckpt", required=True, metavar="DIR", help="model checkpoint, step dir or run dir")
    to_hf.add_argument("--out", required=True, metavar="DIR", help="HF directory to create (new or empty)")
    to_hf.add_argument(
        "--base",
        metavar="RELEASE_DIR",
        default=None,
        help="the HF release the checkpoint came from: keep its config.json, shards and every tensor sawt "
        "does not train",
    )
    to_hf.add_argument(
        "--dtype",
        choices=("bf16", "fp32"),
        default=None,
        help="dtype of the tensors sawt writes; default: the base's (or the converted source's) dtypes",
    )
    to_hf.add_argument(
        "--prefix",
        choices=("auto", "thinker", "none"),
        default="auto",
        help="key names without --base: 'thinker.'-prefixed like the released checkpoint, or bare like "
        "save_pretrained of the thinker alone; auto (default) uses the converted source's layout, else "
        "'thinker.'",
    )
    to_hf.add_argument(
        "--max-shard-gb",
        type=float,
        default=5.0,
        help="largest shard size in GB without --base (default: 5, as HF)",
    )
    to_hf.add_argument("--quiet", action="store_true", help="print only the JSON summary")
    to_hf.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tools.hf.convert import main

    return main(args)
