"""The tokenizer as the Qwen3-Omni release ships it: vocab.json + merges.txt, no tokenizer.json, unk null,
the processor's chat_template.json beside a text-only template in tokenizer_config.json.

The fixture (tests/helpers/release.py) was written by transformers with the real added-token ids; the prompts
in its reference were rendered by transformers from the same files, so sawt must reproduce them exactly.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers.release import reference, release_dir
from trainer.data.text import (
    TokenizerError,
    asr_messages,
    asr_prompt_ids,
    has_tokenizer,
    load_tokenizer,
)
from trainer.model.geometry import encoder_token_count

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json")


def _tokenizer_copy(dst, **config_changes):
    for name in TOKENIZER_FILES:
        shutil.copy(release_dir() / name, dst / name)
    if config_changes:
        config = json.loads((dst / "tokenizer_config.json").read_text())
        config.update(config_changes)
        (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


def test_release_layout_loads_with_the_real_ids():
    assert not (release_dir() / "tokenizer.json").exists() and has_tokenizer(release_dir())
    assert json.loads((release_dir() / "tokenizer_config.json").read_text())["unk_token"] is None
    tok = load_tokenizer(release_dir())
    assert (tok.endoftext_id, tok.im_start_id, tok.im_end_id) == (151643, 151644, 151645)
    assert (tok.audio_start_id, tok.audio_end_id, tok.audio_pad_id) == (151669, 151670, 151675)
    assert tok.vocab_size == 151676  # 151643 BPE entries + 33 added tokens; the model has 152064 rows
    text = "الطقس اليوم مشمس وجميل في المدينة"
    assert tok.decode(tok.encode(text)) == text


def test_prompts_equal_what_transformers_rendered_from_the_same_files():
    tok = load_tokenizer(release_dir())
    ref = reference()
    for row, frames in enumerate(ref["frames"]):
        want = ref["input_ids"][row, : ref["prompt_len"][row]].tolist()
        assert asr_prompt_ids(tok, encoder_token_count(int(frames))) == want
        target = ref["input_ids"][row, ref["prompt_len"][row] :][
            : len(tok.encode(str(ref["transcripts"][row])))
        ]
        assert tok.encode(str(ref["transcripts"][row])) == target.tolist()


def test_processor_template_wins_over_the_tokenizer_config_one(tmp_path):
    # The release's tokenizer_config.json has a text-only template: with it, the prompt has no audio slot.
    tok = load_tokenizer(release_dir())
    assert (
        tok.hf.chat_template
        == json.loads((release_dir() / "chat_template.json").read_text())["chat_template"]
    )
    _tokenizer_copy(tmp_path)
    (tmp_path / "chat_template.json").unlink()
    text_only = load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="rendered 0 <\\|audio_pad\\|>"):
        asr_prompt_ids(text_only, 3)


def test_template_files_in_hf_processor_order(tmp_path):
    _tokenizer_copy(tmp_path)
    json_template = json.loads((tmp_path / "chat_template.json").read_text())["chat_template"]
    jinja = json_template.replace("<|im_start|>assistant", "<|im_start|>assistant\\n<think>")
    (tmp_path / "chat_template.jinja").write_text(jinja)
    assert load_tokenizer(tmp_path).hf.chat_template == json_template  # legacy .json first, as HF's processor
    (tmp_path / "chat_template.json").unlink()
    assert load_tokenizer(tmp_path).hf.chat_template == jinja  # then .jinja, over tokenizer_config.json
    (tmp_path / "chat_template.jinja").write_text("")
    (tmp_path / "chat_template.json").write_text(json.dumps({"other": 1}))
    with pytest.raises(TokenizerError, match="has no chat_template"):
        load_tokenizer(tmp_path)


def test_unk_equal_to_a_special_token_is_fine(tmp_path):
    # transformers' Qwen2Tokenizer defaults write unk_token <|endoftext|>: the id is both, and that is valid.
    tok = load_tokenizer(_tokenizer_copy(tmp_path, unk_token="<|endoftext|>"))
    assert tok.hf.unk_token_id == tok.endoftext_id == 151643


def test_missing_special_token_is_named_whatever_unk_is(tmp_path):
    for unk in (None, "<|endoftext|>"):
        d = tmp_path / str(unk is None)
        d.mkdir()
        _tokenizer_copy(d, unk_token=unk)
        config = json.loads((d / "tokenizer_config.json").read_text())
        config["added_tokens_decoder"].pop("151675")  # <|audio_pad|>
        config["additional_special_tokens"].remove("<|audio_pad|>")
        (d / "tokenizer_config.json").write_text(json.dumps(config))
        with pytest.raises(TokenizerError, match="no <\\|audio_pad\\|> token"):
            load_tokenizer(d)


def test_no_tokenizer_files_is_named(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "vocab.json").write_text("{}")  # merges.txt missing too
    with pytest.raises(TokenizerError, match=r"vocab\.json and merges\.txt"):
        load_tokenizer(tmp_path)


def test_rendered_prompt_is_the_asr_chatml_layout():
    tok = load_tokenizer(release_dir())
    rendered = tok.hf.apply_chat_template(asr_messages("x"), add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>x<|im_end|>\n<|im_start|>assistant\n"
    )
