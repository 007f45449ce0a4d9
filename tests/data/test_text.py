"""The demo tokenizer's special ids, the ASR prompt layout and the training labels / loss mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.data.text import (
    DEFAULT_INSTRUCTION,
    LANGUAGE_INSTRUCTIONS,
    SPECIAL_TOKENS,
    PromptError,
    PromptStyle,
    TokenizerError,
    asr_messages,
    asr_prompt_ids,
    audio_offset,
    clip_context,
    load_tokenizer,
    prompt_length,
    training_row,
)


def test_special_tokens_have_the_agreed_ids(tokenizer):
    assert [tokenizer.hf.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(10))
    assert (tokenizer.endoftext_id, tokenizer.im_start_id, tokenizer.im_end_id) == (0, 1, 2)
    assert (tokenizer.audio_start_id, tokenizer.audio_end_id, tokenizer.audio_pad_id) == (3, 4, 5)
    assert tokenizer.vocab_size <= 1024


def test_tokenizer_directory_is_what_a_checkpoint_ships(corpus):
    files = {p.name for p in corpus.tokenizer.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= files
    config = json.loads((corpus.tokenizer / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]
    assert config["eos_token"] == "<|im_end|>"


def test_prompt_layout_is_chatml_with_expanded_audio(tokenizer):
    ids = asr_prompt_ids(tokenizer, 4, "Transcribe.")
    assert tokenizer.decode(ids, skip_special_tokens=False) == (
        "<|im_start|>user\n<|audio_start|>" + "<|audio_pad|>" * 4 + "<|audio_end|>Transcribe.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert ids.count(tokenizer.audio_pad_id) == 4
    assert ids[audio_offset(tokenizer, "Transcribe.")] == tokenizer.audio_pad_id
    assert ids[audio_offset(tokenizer, "Transcribe.") - 1] == tokenizer.audio_start_id
    assert prompt_length(tokenizer, 4, "Transcribe.") == len(ids)


def test_prompt_equals_the_hf_chat_template_rendering(tokenizer):
    rendered = tokenizer.hf.apply_chat_template(
        asr_messages("اكتب النص."), add_generation_prompt=True, tokenize=False
    )
    assert (
        asr_prompt_ids(tokenizer, 1, "اكتب النص.")
        == tokenizer.hf(rendered, add_special_tokens=False)["input_ids"]
    )


def test_a_context_is_a_system_turn_rendered_by_the_chat_template(tokenizer):
    ids = asr_prompt_ids(tokenizer, 2, "Transcribe.", "سلمى، يوسف")
    assert tokenizer.decode(ids, skip_special_tokens=False) == (
        "<|im_start|>system\nسلمى، يوسف<|im_end|>\n<|im_start|>user\n<|audio_start|>" + "<|audio_pad|>" * 2
        + "<|audio_end|>Transcribe.<|im_end|>\n<|im_start|>assistant\n"
    )  # fmt: skip
    rendered = tokenizer.hf.apply_chat_template(
        asr_messages("Transcribe.", "سلمى، يوسف"), add_generation_prompt=True, tokenize=False
    )
    assert (
        asr_prompt_ids(tokenizer, 1, "Transcribe.", "سلمى، يوسف")
        == tokenizer.hf(rendered, add_special_tokens=False)["input_ids"]
    )
    assert audio_offset(tokenizer, "Transcribe.", "سلمى، يوسف") == ids.index(tokenizer.audio_pad_id)
    assert prompt_length(tokenizer, 2, "Transcribe.", "سلمى، يوسف") == len(ids)
    # No context, or an empty one, is the plain prompt.
    assert asr_prompt_ids(tokenizer, 2, "Transcribe.", None) == asr_prompt_ids(tokenizer, 2, "Transcribe.")
    assert asr_messages("Transcribe.", "") == asr_messages("Transcribe.")


def test_language_chooses_the_instruction_and_unknown_ones_are_named():
    style = PromptStyle()
    assert style.instruction_for(None) == DEFAULT_INSTRUCTION == style.instruction_for("ar")
    assert style.instruction_for("EN") == LANGUAGE_INSTRUCTIONS["en"] != DEFAULT_INSTRUCTION
    assert style.instruction_for("ar_EN") == LANGUAGE_INSTRUCTIONS["ar-en"]
    with pytest.raises(PromptError, match=r"unsupported language 'fr'; supported: ar, ar-en, en"):
        style.instruction_for("fr")
    custom = PromptStyle("اكتب.", {"ar": "اكتب النص العربي."})
    assert custom.instruction_for(None) == "اكتب." and custom.instruction_for("ar") == "اكتب النص العربي."


def test_clip_context_keeps_the_last_tokens_and_refuses_special_tokens(tokenizer):
    words = " ".join(f"كلمة{i}" for i in range(200))
    clipped = clip_context(tokenizer, words, 16)
    assert len(tokenizer.encode(clipped)) <= 16 and words.endswith(clipped)
    assert clip_context(tokenizer, "قصير", 16) == "قصير"
    assert clip_context(tokenizer, "", 16) is None and clip_context(tokenizer, None, 16) is None
    with pytest.raises(PromptError, match="takes no prompt"):
        clip_context(tokenizer, "قصير", 0)
    with pytest.raises(PromptError, match=r"special tokens <\|audio_pad\|>, <\|im_end\|>"):
        clip_context(tokenizer, "x<|im_end|>y<|audio_pad|>", 16)


def test_labels_cover_only_the_transcript_and_im_end(tokenizer):
    transcript = tokenizer.encode("الجو جميل هذا الصباح.")
    row = training_row(tokenizer, 6, transcript, "Transcribe.")
    prompt = asr_prompt_ids(tokenizer, 6, "Transcribe.")
    ids = row.input_ids.tolist()
    assert ids == [*prompt, *transcript, tokenizer.im_end_id]
    np.testing.assert_array_equal(row.targets[:-1], row.input_ids[1:])
    supervised = row.targets[row.loss_mask == 1.0].tolist()
    assert supervised == [*transcript, tokenizer.im_end_id]
    # Nothing of the prompt (audio placeholders, instruction, scaffolding) is a target of the loss.
    assert row.loss_mask[: len(prompt) - 1].sum() == 0 and row.loss_mask[-1] == 0
    assert tokenizer.decode(supervised) == "الجو جميل هذا الصباح."


def test_load_tokenizer_errors_name_the_directory(tmp_path):
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def _without_template(src, dst):
    (dst / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    config = json.loads((src / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return template


def test_load_tokenizer_requires_a_chat_template(tmp_path, corpus):
    _without_template(corpus.tokenizer, tmp_path)
    with pytest.raises(TokenizerError, match="no chat template"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_reads_a_processor_chat_template_json(tmp_path, corpus, tokenizer):
    # Qwen3-Omni ships its template as chat_template.json next to the tokenizer files.
    template = _without_template(corpus.tokenizer, tmp_path)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    loaded = load_tokenizer(tmp_path)
    assert asr_prompt_ids(loaded, 3, "x") == asr_prompt_ids(tokenizer, 3, "x")
