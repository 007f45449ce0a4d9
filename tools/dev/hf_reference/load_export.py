"""Loads an exported HF directory in transformers, as a user would, and reports what it found.

`Qwen3OmniMoeForConditionalGeneration.from_pretrained(EXP)` (the full model: thinker, talker, code2wav) with
`output_loading_info`, then the thinker's logits (fp32, eager attention) on the release fixture's reference
batch. Writes a JSON report (missing / unexpected / mismatched keys, the class and dtype) and an npz with the
logits. Runs in `.venv-ref` (torch); the slow tests call it on what `sawt convert orbax-to-hf` wrote.

Usage: .venv-ref/bin/python tools/dev/hf_reference/load_export.py EXP --reference tests/goldens/release/reference.npz
           --out REPORT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_goldens import features, waveform
else:
    from tools.dev.hf_reference.make_goldens import features, waveform


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--reference", type=Path, required=True, help="reference.npz of the release fixture")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeForConditionalGeneration,
    )

    model, info = Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        str(args.export), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    model.eval()
    ref = dict(np.load(args.reference))
    fe = WhisperFeatureExtractor.from_pretrained(str(args.export))
    mels = [features(fe, waveform(float(s))) for s in ref["clip_seconds"]]
    fmax = max(m.shape[1] for m in mels)
    feats = np.zeros((len(mels), 128, fmax), np.float32)
    fmask = np.zeros((len(mels), fmax), np.int64)
    for b, m in enumerate(mels):
        feats[b, :, : m.shape[1]] = m
        fmask[b, : m.shape[1]] = 1
    with torch.no_grad():
        logits = model.thinker(
            input_ids=torch.from_numpy(ref["input_ids"].astype(np.int64)),
            attention_mask=torch.from_numpy(ref["attention_mask"].astype(np.int64)),
            input_features=torch.from_numpy(feats),
            feature_attention_mask=torch.from_numpy(fmask),
        ).logits.numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "logits.npy", logits.astype(np.float32))
    report = {
        "class": type(model).__name__,
        "has_talker": bool(getattr(model, "has_talker", False)),
        "missing_keys": sorted(info.get("missing_keys", [])),
        "unexpected_keys": sorted(info.get("unexpected_keys", [])),
        "mismatched_keys": [list(map(str, k)) for k in info.get("mismatched_keys", [])],
        "error_msgs": [str(e) for e in info.get("error_msgs", [])],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: (len(v) if isinstance(v, list) else v) for k, v in report.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
