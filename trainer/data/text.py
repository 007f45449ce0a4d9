"""Tokenizer, ASR prompt and training labels (interface 3 and the token half of the batch dict).

The tokenizer loads from a local Hugging Face tokenizer directory exactly as a real checkpoint ships it:
``tokenizer_config.json`` with ``tokenizer.json`` or with ``vocab.json`` + ``merges.txt`` (the Qwen3-Omni
release), and the processor's ``chat_template.json`` / ``chat_template.jinja``, which win over the tokenizer's own
template as in HF's processor. The demo corpus writes one with the same special tokens as Qwen3-Omni at small ids. Special ids are
always read from the tokenizer, never hard-coded, so the same code serves the demo and the 30B checkpoint.

The ASR prompt is rendered with the tokenizer's own chat template (an optional system turn holding a context,
one user turn holding [audio, instruction], then the generation prompt) and tokenised once per instruction; the
single ``<|audio_pad|>`` the template emits is then expanded to the clip's encoder token count, as the HF
processor does. `PromptStyle` words the instruction (per request language); it is the one place every entry point
(training rows, evaluation, the server, batch-infer, transcribe) builds prompts from.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# What the ASR user turn asks for, unless the data config says otherwise.
DEFAULT_INSTRUCTION = "Transcribe the Arabic audio."
# Pad id of the batch dict (interface 1); pads are masked out, so the id only needs to be a valid one.
PAD_ID = 0


@dataclass(frozen=True)
class Tokenizer:
    """A loaded HF tokenizer plus the special ids the data pipeline needs, read from the tokenizer itself.

    Attributes:
        hf: the ``transformers`` tokenizer (chat template, decoding).
        directory: where it was loaded from.
        im_start_id, im_end_id, audio_start_id, audio_end_id, audio_pad_id, endoftext_id: special ids.
        vocab_size: number of ids (including added tokens).
    """

    hf: Any
    directory: str
    im_start_id: int
    im_end_id: int
    audio_start_id: int
    audio_end_id: int
    audio_pad_id: int
    endoftext_id: int
    vocab_size: int
    _prompt_cache: dict = field(default_factory=dict, compare=False, repr=False)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain ``text`` (no special tokens added; special-token strings are not parsed)."""
        return self.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` over many texts in one call to the Rust tokenizer."""
        return [e.ids for e in self.hf.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (special tokens dropped unless asked for)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


class TokenizerError(ValueError):
    """The tokenizer directory is missing, unreadable or lacks a token the ASR prompt needs."""


# What a loadable HF tokenizer directory holds: a serialized fast tokenizer, or the BPE files it is built from
# (the published Qwen3-Omni release ships vocab.json + merges.txt and no tokenizer.json).
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
# Every file an HF tokenizer directory may hold (what replaces a tokenizer as a whole).
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.json",
        "chat_template.jinja",
    }
)
# Where a checkpoint's processor template lives, in the order HF's processor prefers them; the tokenizer's
# own template (tokenizer_config.json) is the fallback.
PROCESSOR_TEMPLATE_FILES = ("processor_config.json", "chat_template.json", "chat_template.jinja")


def has_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory`` (local or ``gs://``) holds the files of an HF tokenizer (`TOKENIZER_FILE_SETS`)."""
    from etils import epath

    path = epath.Path(directory)
    return any(all((path / f).is_file() for f in files) for files in TOKENIZER_FILE_SETS)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Loads an HF tokenizer directory and reads the special ids from it.

    Args:
        directory: a local directory with ``tokenizer_config.json`` and either ``tokenizer.json`` or
            ``vocab.json`` + ``merges.txt`` (as the Qwen3-Omni release ships it).

    Returns:
        The `Tokenizer`. Its chat template is the processor's (``chat_template.json`` or
        ``chat_template.jinja``, as HF's processor loads it) when the directory has one, else the
        tokenizer's own.

    Raises:
        TokenizerError: the directory or a required special token is missing, or it has no chat template.
    """
    path = Path(directory)
    if not has_tokenizer(path):
        raise TokenizerError(
            f"{path}: no tokenizer here (expected an HF tokenizer directory: tokenizer.json, or vocab.json "
            "and merges.txt, beside tokenizer_config.json)"
        )
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers raises many kinds; the user needs the path and the reason
        raise TokenizerError(f"{path}: cannot load the tokenizer ({err})") from err
    template = processor_chat_template(path) or getattr(hf, "chat_template", None)
    if not template:
        raise TokenizerError(
            f"{path}: no chat template (looked in {', '.join(PROCESSOR_TEMPLATE_FILES)} and "
            "tokenizer_config.json)"
        )
    hf.chat_template = template

    def special(name: str) -> int:
        # Found by exact token text: whatever the unk token is (None in Qwen's release, <|endoftext|> with
        # transformers' Qwen2Tokenizer defaults), a missing token maps to some other token's text.
        token_id = hf.convert_tokens_to_ids(name)
        if token_id is None or hf.convert_ids_to_tokens(int(token_id)) != name:
            raise TokenizerError(f"{path}: the tokenizer has no {name} token")
        return int(token_id)

    return Tokenizer(
        hf=hf,
        directory=str(path),
        im_start_id=special("<|im_start|>"),
        im_end_id=special("<|im_end|>"),
        audio_start_id=special("<|audio_start|>"),
        audio_end_id=special("<|audio_end|>"),
        audio_pad_id=special("<|audio_pad|>"),
        endoftext_id=special("<|endoftext|>"),
        vocab_size=len(hf),
    )


def check_model_ids(tok: Tokenizer, model_config: Any, where: str) -> None:
    """Checks that the tokenizer and the model agree on the ids the model itself uses.

    A tokenizer from another checkpoint would otherwise train or decode silently wrong: the model splices
    audio where its config's ``audio_token_id`` stands, whatever the tokenizer calls ``<|audio_pad|>``.

    Raises:
        TokenizerError: naming the first id that differs, or a tokenizer larger than the embedding.
    """
    ids = model_config.tokens
    for name, mine, theirs in (
        ("<|audio_pad|>", tok.audio_pad_id, ids.audio_token_id),
        ("<|audio_start|>", tok.audio_start_id, ids.audio_start_token_id),
        ("<|audio_end|>", tok.audio_end_id, ids.audio_end_token_id),
    ):
        if mine != theirs:
            raise TokenizerError(
                f"{where}: the tokenizer's {name} is id {mine}, the model's config says {theirs} "
                f"(tokenizer {tok.directory} does not belong to this model)"
            )
    if tok.vocab_size > model_config.text.vocab_size:
        raise TokenizerError(
            f"{where}: the tokenizer has {tok.vocab_size} ids, the model's embedding only "
            f"{model_config.text.vocab_size} rows"
        )


def processor_chat_template(path: Path) -> str | None:
    """The template a checkpoint ships for its processor, which ``AutoTokenizer`` alone does not prefer.

    HF's processor takes ``processor_config.json``'s ``chat_template``, else ``chat_template.json``
    (Qwen3-Omni's release), else ``chat_template.jinja``.
    """
    import json

    for name in PROCESSOR_TEMPLATE_FILES:
        file = path / name
        if not file.is_file():
            continue
        if name.endswith(".jinja"):
            return file.read_text(encoding="utf-8")
        try:
            template = json.loads(file.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError) as err:
            raise TokenizerError(f"{file}: not a JSON object") from err
        if isinstance(template, str) and template:
            return template
        if name == "chat_template.json":
            raise TokenizerError(f"{file}: has no chat_template string")
    return None


# The instruction's wording for each request language (ISO-639-1 codes; ``ar-en`` is code-switched Arabic and
# English). The Arabic wording is the default instruction, the one the demo and the presets train with.
LANGUAGE_INSTRUCTIONS: dict[str, str] = {
    "ar": DEFAULT_INSTRUCTION,
    "en": "Transcribe the English audio.",
    "ar-en": "Transcribe the audio, which mixes Arabic and English.",
}


class PromptError(ValueError):
    """A language or context cannot go into the prompt; the message says why, ``param`` which one it was
    (``language`` or ``prompt``, the OpenAI request field)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def normalize_language(code: str) -> str:
    """``AR``, ``ar_EN`` -> ``ar``, ``ar-en``: lower case, hyphenated."""
    return code.strip().lower().replace("_", "-")


@dataclass(frozen=True)
class PromptStyle:
    """How a run words its ASR prompt; training, evaluation, serving, batch-infer and transcribe share it.

    Attributes:
        instruction: the user turn's text after the audio when no language is asked for (``data.instruction``).
        languages: language code -> instruction (``data.language_instructions``).
    """

    instruction: str = DEFAULT_INSTRUCTION
    languages: dict[str, str] = field(default_factory=lambda: dict(LANGUAGE_INSTRUCTIONS))

    def instruction_for(self, language: str | None) -> str:
        """The instruction for ``language`` (None: the default one).

        Raises:
            PromptError: ``language`` is not one of `languages`; the message names the supported ones.
        """
        if language is None:
            return self.instruction
        code = normalize_language(language)
        if code not in self.languages:
            raise PromptError(
                f"unsupported language {language!r}; supported: {', '.join(sorted(self.languages))}",
                "language",
            )
        return self.languages[code]


def asr_messages(instruction: str, context: str | None = None) -> list[dict]:
    """The chat messages of an ASR request: an optional system turn holding the context (a glossary, names,
    the previous window's text, as Qwen3-ASR takes it), then one user turn holding the audio and the
    instruction."""
    user = {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": instruction}]}
    return [{"role": "system", "content": context}, user] if context else [user]


def clip_context(tok: Tokenizer, context: str | None, max_tokens: int) -> str | None:
    """``context`` cut to its last ``max_tokens`` tokens (the end of a previous window's text is what
    matters, as Whisper keeps the final 224 tokens of a prompt); None or empty stays None.

    Raises:
        PromptError: the context holds a special token's text (``<|im_end|>``...), which would change the
            prompt's structure instead of being read as text, or ``max_tokens`` is 0 (prompts disabled).
    """
    if not context:
        return None
    parsed = tok.hf(context, add_special_tokens=False)["input_ids"]
    specials = set(tok.hf.added_tokens_decoder)
    if specials.intersection(parsed):
        names = sorted({tok.hf.convert_ids_to_tokens(int(t)) for t in parsed if t in specials})
        raise PromptError(f"the prompt contains special tokens {', '.join(names)}", "prompt")
    if max_tokens <= 0:
        raise PromptError("this model takes no prompt (its prompt budget is 0 tokens)", "prompt")
    ids = tok.encode(context)
    if len(ids) <= max_tokens:
        return context
    return tok.decode(ids[-max_tokens:]).lstrip("\ufffd").strip() or None


def _prompt_parts(
    tok: Tokenizer, instruction: str, context: str | None = None
) -> tuple[list[int], list[int]]:
    """The prompt's ids before and after its single ``<|audio_pad|>``, rendered by the chat template.

    Cached per instruction; prompts with a context (one per request) are rendered each time.
    """
    key = (instruction, context)
    cached = tok._prompt_cache.get(key)
    if cached is not None:
        return cached
    rendered = tok.hf.apply_chat_template(
        asr_messages(instruction, context), add_generation_prompt=True, tokenize=False
    )
    ids = tok.hf(rendered, add_special_tokens=False)["input_ids"]
    pads = [i for i, t in enumerate(ids) if t == tok.audio_pad_id]
    if len(pads) != 1:
        raise TokenizerError(
            f"{tok.directory}: the chat template rendered {len(pads)} <|audio_pad|> for one audio item, "
            f"expected 1: {rendered!r}"
        )
    parts = (ids[: pads[0]], ids[pads[0] + 1 :])
    if context is None:
        tok._prompt_cache[key] = parts
    return parts


def asr_prompt_ids(
    tok: Tokenizer, n_audio_tokens: int, instruction: str = DEFAULT_INSTRUCTION, context: str | None = None
) -> list[int]:
    """Token ids of the ASR prompt with ``n_audio_tokens`` audio placeholders.

    With a ChatML template this is ``<|im_start|>user\\n<|audio_start|>`` + n x ``<|audio_pad|>`` +
    ``<|audio_end|>{instruction}<|im_end|>\\n<|im_start|>assistant\\n``, preceded by
    ``<|im_start|>system\\n{context}<|im_end|>\\n`` when there is a context.
    """
    before, after = _prompt_parts(tok, instruction, context)
    return [*before, *([tok.audio_pad_id] * int(n_audio_tokens)), *after]


def prompt_length(
    tok: Tokenizer, n_audio_tokens: int, instruction: str = DEFAULT_INSTRUCTION, context: str | None = None
) -> int:
    """Length of `asr_prompt_ids` without building it."""
    before, after = _prompt_parts(tok, instruction, context)
    return len(before) + int(n_audio_tokens) + len(after)


def audio_offset(tok: Tokenizer, instruction: str = DEFAULT_INSTRUCTION, context: str | None = None) -> int:
    """Index of the first ``<|audio_pad|>`` in the prompt (the same for every clip of one prompt)."""
    return len(_prompt_parts(tok, instruction, context)[0])


def prompt_record(tok: Tokenizer, style: PromptStyle) -> dict[str, Any]:
    """What a run directory records about the prompt it trains on (``RUN/model/prompt.json``).

    The wording (the default instruction and the per-language ones) is what prompts are made from; the
    rendering of the default one (one ``<|audio_pad|>``, before the processor expands it) and its ids let a
    server check that its tokenizer and template rebuild exactly that prompt.
    """
    rendered = tok.hf.apply_chat_template(
        asr_messages(style.instruction), add_generation_prompt=True, tokenize=False
    )
    before, after = _prompt_parts(tok, style.instruction)
    return {
        "instruction": style.instruction,
        "language_instructions": dict(style.languages),
        "rendered": rendered,
        "ids_around_audio": [list(before), list(after)],
    }


def check_prompt_record(tok: Tokenizer, record: dict[str, Any], where: str) -> PromptStyle:
    """The prompt wording a run recorded, after checking that ``tok`` renders it as recorded.

    Raises:
        TokenizerError: the record is malformed, or the tokenizer/template in use renders another prompt.
    """
    instruction = record.get("instruction") if isinstance(record, dict) else None
    languages = (
        record.get("language_instructions", LANGUAGE_INSTRUCTIONS) if isinstance(record, dict) else None
    )
    if not isinstance(instruction, str) or not isinstance(languages, dict):
        raise TokenizerError(f"{where}: no instruction recorded")
    style = PromptStyle(instruction, {normalize_language(k): str(v) for k, v in languages.items()})
    now = prompt_record(tok, style)
    if (
        "ids_around_audio" in record
        and [list(p) for p in record["ids_around_audio"]] != now["ids_around_audio"]
    ):
        raise TokenizerError(
            f"{where}: the tokenizer in {tok.directory} renders another prompt than the run trained on "
            f"({now['rendered']!r} vs {record.get('rendered')!r})"
        )
    return style


@dataclass(frozen=True)
class TrainingRow:
    """The token part of one batch row before padding (see `training_row`)."""

    input_ids: np.ndarray  # int32 [n]
    targets: np.ndarray  # int32 [n]
    loss_mask: np.ndarray  # float32 [n]
    audio_offset: int


def training_row(
    tok: Tokenizer,
    n_audio_tokens: int,
    transcript_ids: list[int],
    instruction: str = DEFAULT_INSTRUCTION,
    context: str | None = None,
) -> TrainingRow:
    """Prompt + ``{transcript}<|im_end|>``, its next-token targets and the loss mask.

    ``targets[i] = input_ids[i + 1]`` (the last position predicts nothing: pad id, mask 0). The loss mask is 1
    exactly where the target is a transcript token or the final ``<|im_end|>``.
    """
    prompt = asr_prompt_ids(tok, n_audio_tokens, instruction, context)
    ids = np.asarray([*prompt, *transcript_ids, tok.im_end_id], dtype=np.int32)
    targets = np.empty_like(ids)
    targets[:-1] = ids[1:]
    targets[-1] = PAD_ID
    loss_mask = np.zeros(ids.size, np.float32)
    # Position i predicts ids[i + 1]; the answer starts at index len(prompt).
    loss_mask[len(prompt) - 1 : ids.size - 1] = 1.0
    return TrainingRow(ids, targets, loss_mask, audio_offset(tok, instruction, context))


@functools.cache
def chatml_template() -> str:
    """The ChatML chat template written into the demo tokenizer (Qwen's layout for text and audio parts).

    Audio parts render as ``<|audio_start|><|audio_pad|><|audio_end|>``; the processor (here `asr_prompt_ids`)
    expands the single pad to the encoder's token count.
    """
    return (
        "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'audio' -%}{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
        "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )
