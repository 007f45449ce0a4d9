"""Builds the release-shaped fixture: a tiny full Qwen3-Omni checkpoint laid out like the published release.

The published `Qwen/Qwen3-Omni-30B-A3B-Instruct` directory is what users convert, fine-tune and export. This
tool makes a tiny stand-in with the same files, the same config nesting and the same tokenizer files, made
by transformers itself, so the whole journey (convert -> fine-tune -> export -> serve) is tested on the
real layout without the real 70 GB:

* `config.json`: a `Qwen3OmniMoeConfig` (`architectures: ["Qwen3OmniMoeForConditionalGeneration"]`) with
  `thinker_config` (audio, vision and text configs), `talker_config` (text and code-predictor configs) and
  `code2wav_config`, written by `save_pretrained` of a `Qwen3OmniMoeForConditionalGeneration`.
* `model-0000N-of-0000M.safetensors` (at least three shards) + `model.safetensors.index.json`, bf16 like
  the release, keys `thinker.*` (incl. `thinker.visual.*`), `talker.*` and `code2wav.*`.
* `vocab.json`, `merges.txt`, `tokenizer_config.json` (`added_tokens_decoder`, `"unk_token": null`,
  eos `<|im_end|>`, pad `<|endoftext|>`, a text-only Qwen chat template) and **no `tokenizer.json`**.
* `chat_template.json` (the processor's multimodal template, which HF's processor prefers),
  `preprocessor_config.json` (WhisperFeatureExtractor, 128 mels, 300 s chunk, plus the image keys and
  `processor_class`), `generation_config.json`.

Real values are kept wherever they cost no size: the vocabulary has the release's 152064 rows, and the 33
added tokens sit at their real ids 151643..151675 (`<|audio_pad|>` = 151675). `vocab.json` therefore holds
151643 entries like the release's: a small byte-level BPE trained on the Arabic demo sentences, then
filler entries (`<fillN>`, unreachable by any merge) up to id 151642. The audio front end is the real one
(128 mels, n_window 50, n_window_infer 800); widths are tiny (text hidden 16).

Weights are redrawn at O(1) scale (HF's 0.02 init would make the tiny model blind to its inputs) and rounded
to bf16. Embedding and lm_head rows of ids that no tokenizer entry reaches (the fillers and the padding rows
151676..152063) repeat a 64-row pool, so the archive compresses; every row is O(1) all the same.

Outputs in `--out` (tests/goldens/release/):
* `qwen3-omni-tiny.tar.xz`: the release directory `qwen3-omni-tiny/`, byte for byte what the tools wrote
  (the tests extract it once; tests/helpers/release.py).
* `reference.npz`: inputs and transformers' outputs of the full model's thinker (fp32, eager attention) on a
  padded batch of two ASR prompts (2.5 s and 9.37 s clips; the second spans two attention windows), the
  prompts rendered by transformers from the fixture's own tokenizer and `chat_template.json`.
* `meta.json`: versions, shapes and what each array is.

Runs in `.venv-ref` (Python 3.11 + torch CPU + transformers 5.24; `make goldens`); imports nothing from sawt.

Usage: .venv-ref/bin/python tools/dev/hf_reference/release_fixture.py [--out tests/goldens/release]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the sibling module importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_goldens import SAMPLE_RATE, features, waveform
else:
    from tools.dev.hf_reference.make_goldens import SAMPLE_RATE, features, waveform

NAME = "qwen3-omni-tiny"
ARCHIVE = f"{NAME}.tar.xz"
# The 33 tokens Qwen3-Omni's tokenizer adds after its 151643 BPE entries, in id order (151643..151675).
ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    "<|audio_pad|>",
)
FIRST_ADDED_ID = 151643
ID = {t: FIRST_ADDED_ID + i for i, t in enumerate(ADDED_TOKENS)}
# Qwen3 marks the tool, fim, repo and think tokens as added but not special (ids 151657..151668).
NOT_SPECIAL = frozenset(ADDED_TOKENS[14:26])
VOCAB_SIZE = 152064  # embedding rows, padded above the tokenizer's 151676 ids as in the release
BPE_SIZE = 700  # the real byte-level BPE part of vocab.json; fillers follow up to FIRST_ADDED_ID - 1
POOL_ROWS = 64
INSTRUCTION = "Transcribe the Arabic audio."  # sawt's default ASR instruction (trainer/data/text.py)
SENTENCES = Path(__file__).resolve().parents[2] / "data" / "corpus" / "ar_sentences.txt"
# Two ASR rows: clip seconds and the transcript the assistant turn holds.
ROWS = ((2.5, "صباح الخير يا أصدقائي"), (9.37, "الطقس اليوم مشمس وجميل في المدينة"))
# Columns of the stored logits: every STRIDE-th id plus every id of the inputs and every added token.
LOGIT_COLUMN_STRIDE = 509
# Shards: small enough that the tiny model still spans several files, like the release's 15.
MAX_SHARD_SIZE = "200kB"

# The Qwen text template of tokenizer_config.json (text-only: a list content is not understood). The
# processor's template in chat_template.json is the multimodal one; HF's processor prefers it.
TEXT_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (loop.first and message['role'] == 'system') -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | string + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
PROCESSOR_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['content'] is string -%}{{- messages[0]['content'] -}}"
    "{%- else -%}{%- for part in messages[0]['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (loop.first and message['role'] == 'system') -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'audio' or 'audio' in part or 'audio_url' in part -%}"
    "{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
    "{%- elif part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# The tokenizer's pre-tokenizer split (transformers' Qwen2Tokenizer), so the trained merges apply as loaded.
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def rope(theta: float, section: list[int]) -> dict:
    return {"rope_type": "default", "rope_theta": theta, "mrope_section": section, "interleaved": True}


def release_config():
    """The tiny `Qwen3OmniMoeConfig`: the release's nesting and token ids, tiny widths."""
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeConfig

    hidden = 16
    text = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,  # q width 32 != hidden 16, as in the release (4096 != 2048)
        hidden_act="silu",
        max_position_embeddings=65536,
        rms_norm_eps=1e-6,
        rope_parameters=rope(1e6, [4, 2, 2]),
        attention_bias=False,
        decoder_sparse_step=1,
        moe_intermediate_size=16,
        num_experts_per_tok=2,
        num_experts=4,
        norm_topk_prob=True,
        router_aux_loss_coef=0.001,
        mlp_only_layers=[],
    )
    audio = dict(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        d_model=16,
        output_dim=hidden,
        n_window=50,
        n_window_infer=800,
        downsample_hidden_size=8,
        max_source_positions=1500,
        conv_chunksize=500,
        activation_function="gelu",
    )
    vision = dict(
        depth=3,
        hidden_size=16,
        intermediate_size=16,
        num_heads=2,
        out_hidden_size=hidden,
        deepstack_visual_indexes=[0, 1, 2],  # three merger_list entries, as the release's [8, 16, 24]
        num_position_embeddings=16,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    thinker = dict(
        audio_config=audio,
        vision_config=vision,
        text_config=text,
        audio_token_id=ID["<|audio_pad|>"],
        audio_start_token_id=ID["<|audio_start|>"],
        audio_end_token_id=ID["<|audio_end|>"],
        image_token_id=ID["<|image_pad|>"],
        video_token_id=ID["<|video_pad|>"],
        vision_start_token_id=ID["<|vision_start|>"],
        vision_end_token_id=ID["<|vision_end|>"],
        position_id_per_seconds=13,
        seconds_per_chunk=2,
        user_token_id=872,
    )
    talker = dict(
        text_config=dict(
            vocab_size=3072,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=4,
            moe_intermediate_size=8,
            num_experts=2,
            num_experts_per_tok=1,
            shared_expert_intermediate_size=8,
            rope_parameters=rope(1e6, [1, 1, 0]),
        ),
        code_predictor_config=dict(
            vocab_size=64,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=4,
            num_code_groups=4,
        ),
        num_code_groups=4,
        thinker_hidden_size=hidden,
        accept_hidden_layer=1,
        codec_pad_id=2148,
        codec_bos_id=2149,
        codec_eos_token_id=2150,
        codec_nothink_id=2155,
        codec_think_bos_id=2156,
        codec_think_eos_id=2157,
        speaker_id={"chelsie": 2301, "ethan": 2302, "aiden": 2303},
        audio_token_id=ID["<|audio_pad|>"],
        audio_start_token_id=ID["<|audio_start|>"],
        image_token_id=ID["<|image_pad|>"],
        video_token_id=ID["<|video_pad|>"],
        vision_start_token_id=ID["<|vision_start|>"],
        position_id_per_seconds=13,
        seconds_per_chunk=2,
        spatial_merge_size=2,
    )
    code2wav = dict(
        codebook_size=64,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_quantizers=4,
        decoder_dim=16,
        sliding_window=72,
    )
    cfg = Qwen3OmniMoeConfig(
        thinker_config=thinker,
        talker_config=talker,
        code2wav_config=code2wav,
        enable_audio_output=True,
        im_start_token_id=ID["<|im_start|>"],
        im_end_token_id=ID["<|im_end|>"],
        tts_pad_token_id=ID["<tts_pad>"],
        tts_bos_token_id=ID["<tts_text_bos>"],
        tts_eos_token_id=ID["<tts_text_eod>"],
    )
    return cfg


def reachable_ids() -> np.ndarray:
    """Ids a tokenizer entry reaches: the real BPE part and the added tokens."""
    return np.concatenate(
        [np.arange(BPE_SIZE), np.arange(FIRST_ADDED_ID, FIRST_ADDED_ID + len(ADDED_TOKENS))]
    )


def redraw_weights(model, seed: int) -> None:
    """O(1)-scale weights rounded to bf16-representable values; vocabulary rows nobody reaches are pooled."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    vocab_keys = ("embed_tokens.weight", "thinker.lm_head.weight")
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith("norm.weight") or "layer_norm.weight" in name or "ln_post.weight" in name:
                value = 1.0 + 0.2 * torch.randn(shape, generator=gen)
            elif name.endswith(".bias") or p.ndim == 1:
                value = 0.2 * torch.randn(shape, generator=gen)
            elif "embed" in name or "codec_embedding" in name:
                value = torch.randn(shape, generator=gen)
            elif "experts.gate_up_proj" in name or "experts.down_proj" in name:
                value = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
            elif "mlp.gate.weight" in name:  # routers: spread logits so top-k choices vary
                value = 2.0 * torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
            else:
                value = torch.randn(shape, generator=gen) / math.sqrt(max(1, int(np.prod(shape[1:]))))
            if name.startswith("thinker") and name.endswith(vocab_keys):
                pooled = torch.arange(VOCAB_SIZE) % POOL_ROWS
                keep = torch.from_numpy(reachable_ids())
                rows = value[pooled]
                rows[keep] = value[keep]
                value = rows
            p.copy_(value.to(torch.bfloat16).to(p.dtype))


def corpus_sentences() -> list[str]:
    lines = SENTENCES.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def write_tokenizer(out: Path) -> None:
    """vocab.json + merges.txt + tokenizer_config.json, as the release ships them (no tokenizer.json)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    scaffolding = ["user\n", "assistant\n", "system\n", INSTRUCTION] * 20
    tok.train_from_iterator(corpus_sentences() + [r[1] for r in ROWS] + scaffolding, trainer)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = tok.model.save(tmp)
        vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        merges = Path(merges_file).read_text(encoding="utf-8")
    assert sorted(vocab.values()) == list(range(BPE_SIZE)), "the BPE vocabulary must be 0..BPE_SIZE-1"
    for i in range(BPE_SIZE, FIRST_ADDED_ID):
        vocab[f"<fill{i}>"] = i
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), "utf-8")
    (out / "merges.txt").write_text(merges, encoding="utf-8")
    added = {
        str(ID[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t not in NOT_SPECIAL,
        }
        for t in ADDED_TOKENS
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in ADDED_TOKENS[1:] if t not in NOT_SPECIAL],
        "bos_token": None,
        "chat_template": TEXT_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "extra_special_tokens": {},
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8"
    )


def write_processor_files(out: Path) -> None:
    """chat_template.json and preprocessor_config.json (the feature extractor's part written by transformers)."""
    from transformers import WhisperFeatureExtractor

    (out / "chat_template.json").write_text(
        json.dumps({"chat_template": PROCESSOR_CHAT_TEMPLATE}, indent=2, ensure_ascii=False) + "\n", "utf-8"
    )
    fe = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLE_RATE,
        hop_length=160,
        chunk_length=300,
        n_fft=400,
        padding_value=0.0,
        dither=0.0,
        return_attention_mask=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        fe.save_pretrained(tmp)
        pre = json.loads((Path(tmp) / "preprocessor_config.json").read_text())
    # The release's file also configures the image processor (torchvision is not installed here, so those
    # keys are written as the release has them instead of by Qwen2VLImageProcessor).
    pre.update(
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "patch_size": 16,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "min_pixels": 3136,
            "max_pixels": 12845056,
            "processor_class": "Qwen3OmniMoeProcessor",
        }
    )
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n", "utf-8")


def generation_config():
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=ID["<|endoftext|>"],
        eos_token_id=[ID["<|im_end|>"], ID["<|endoftext|>"]],
        pad_token_id=ID["<|endoftext|>"],
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.05,
    )


def build_rows(release: Path):
    """The reference batch: prompts rendered by transformers from the fixture's own files."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    tok = AutoTokenizer.from_pretrained(str(release), local_files_only=True)
    template = json.loads((release / "chat_template.json").read_text())["chat_template"]
    fe = WhisperFeatureExtractor.from_pretrained(str(release))
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": INSTRUCTION}]}]
    rendered = tok.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    rows = []
    for seconds, text in ROWS:
        mel = features(fe, waveform(seconds))
        n_tokens = int(_get_feat_extract_output_lengths(torch_tensor([mel.shape[1]]))[0])
        prompt = tok(rendered, add_special_tokens=False)["input_ids"]
        pad = prompt.index(ID["<|audio_pad|>"])
        prompt = prompt[:pad] + [ID["<|audio_pad|>"]] * n_tokens + prompt[pad + 1 :]
        target = tok(text, add_special_tokens=False)["input_ids"] + [ID["<|im_end|>"]]
        rows.append(dict(seconds=seconds, mel=mel, prompt=prompt, target=target, text=text))
    return rows, rendered


def torch_tensor(values):
    import torch

    return torch.tensor(values)


def reference_outputs(model, release: Path) -> dict[str, np.ndarray]:
    """transformers' thinker logits on a padded batch of the two ASR rows (fp32)."""
    import torch

    rows, rendered = build_rows(release)
    seqs = [r["prompt"] + r["target"] for r in rows]
    width = max(len(s) for s in seqs)
    ids = np.full((len(rows), width), ID["<|endoftext|>"], np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = s
        mask[b, : len(s)] = 1
    fmax = max(r["mel"].shape[1] for r in rows)
    feats = np.zeros((len(rows), 128, fmax), np.float32)
    fmask = np.zeros((len(rows), fmax), np.int64)
    for b, r in enumerate(rows):
        feats[b, :, : r["mel"].shape[1]] = r["mel"]
        fmask[b, : r["mel"].shape[1]] = 1
    with torch.no_grad():
        out = model.thinker(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            input_features=torch.from_numpy(feats),
            feature_attention_mask=torch.from_numpy(fmask),
        )
    logits = out.logits.numpy().astype(np.float32)
    # Positions after the audio (they attend to it): from <|audio_end|> to the row's last token.
    starts = [r["prompt"].index(ID["<|audio_end|>"]) for r in rows]
    n_pos = min(len(s) - st for s, st in zip(seqs, starts, strict=True))
    positions = np.stack([np.arange(st, st + n_pos) for st in starts]).astype(np.int32)
    used = set(np.unique(ids).tolist())
    cols = sorted(set(range(0, VOCAB_SIZE, LOGIT_COLUMN_STRIDE)) | used | set(ID.values()))
    picked = np.stack([logits[b, positions[b]] for b in range(len(rows))])  # [B, P, V]
    ref = {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask.astype(np.int32),
        "prompt_len": np.array([len(r["prompt"]) for r in rows], np.int32),
        "clip_seconds": np.array([r["seconds"] for r in rows], np.float64),
        "frames": np.array([r["mel"].shape[1] for r in rows], np.int32),
        "positions": positions,
        "columns": np.array(cols, np.int32),
        "logits": picked[:, :, cols].astype(np.float32),
        "logsumexp": torch.logsumexp(torch.from_numpy(picked), dim=-1).numpy().astype(np.float32),
        "argmax": picked.argmax(-1).astype(np.int32),
    }
    ref["rendered_prompt"] = np.array(rendered)
    ref["transcripts"] = np.array([r["text"] for r in rows])
    return ref


def _reset(tarinfo: tarfile.TarInfo) -> tarfile.TarInfo:
    tarinfo.uid = tarinfo.gid = 0
    tarinfo.uname = tarinfo.gname = ""
    tarinfo.mtime = 0
    tarinfo.mode = 0o755 if tarinfo.isdir() else 0o644
    return tarinfo


def write_archive(release: Path, archive: Path) -> None:
    """A reproducible tar.xz of the release directory (sorted names, zero times and owners)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(release, arcname=NAME, recursive=False, filter=_reset)
        for f in sorted(release.iterdir()):
            tar.add(f, arcname=f"{NAME}/{f.name}", filter=_reset)
    import lzma

    archive.write_bytes(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))


def build(out_dir: Path) -> None:
    import torch
    import transformers
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeForConditionalGeneration,
    )

    torch.manual_seed(0)
    cfg = release_config()
    cfg.thinker_config._attn_implementation = "eager"
    model = Qwen3OmniMoeForConditionalGeneration(cfg).eval()
    redraw_weights(model, seed=20251)
    model.generation_config = generation_config()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        release = Path(tmp) / NAME
        model.to(torch.bfloat16).save_pretrained(release, max_shard_size=MAX_SHARD_SIZE)
        write_tokenizer(release)
        write_processor_files(release)
        shards = sorted(release.glob("model-*.safetensors"))
        assert len(shards) >= 3 and (release / "model.safetensors.index.json").is_file(), shards
        assert not (release / "tokenizer.json").exists()
        # Reference outputs from the saved files: reload, then run the thinker in fp32 on the bf16 weights.
        loaded = Qwen3OmniMoeForConditionalGeneration.from_pretrained(
            str(release), dtype=torch.float32, attn_implementation="eager"
        ).eval()
        ref = reference_outputs(loaded, release)
        files = {f.name: f.stat().st_size for f in sorted(release.iterdir())}
        digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(release.iterdir())}
        write_archive(release, out_dir / ARCHIVE)
        n_tensors = len(json.loads((release / "model.safetensors.index.json").read_text())["weight_map"])
    np.savez_compressed(out_dir / "reference.npz", **ref)
    meta = {
        "name": NAME,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "files": files,
        "sha256": digests,
        "tensors": n_tensors,
        "params": sum(p.numel() for p in model.parameters()),
        "weights": "O(1) redraw rounded to bf16, saved in bf16 by save_pretrained; unreachable vocabulary rows "
        f"repeat a {POOL_ROWS}-row pool",
        "tokenizer": f"byte-level BPE of {BPE_SIZE} entries on tools/data/corpus/ar_sentences.txt, fillers to id "
        f"{FIRST_ADDED_ID - 1}, the 33 added tokens at {FIRST_ADDED_ID}..{FIRST_ADDED_ID + len(ADDED_TOKENS) - 1}",
        "not_verified": "the release's chat template texts and generation_config.json values were not available "
        "offline: the templates here render Qwen's ChatML layout (docs/qwen3-omni-thinker.md §5), the "
        "generation config carries Qwen's usual sampling values with the real eos/pad ids",
        "arrays": {k: list(np.shape(v)) for k, v in ref.items()},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    size = (out_dir / ARCHIVE).stat().st_size
    print(f"{NAME}: {n_tensors} tensors in {len(shards)} shards; archive {size / 1e3:.0f} kB in {out_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("tests/goldens/release"), help="output directory")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: torch is missing; run this with .venv-ref/bin/python (make goldens)", file=sys.stderr)
        return 2
    build(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
