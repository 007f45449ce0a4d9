"""Config of the input pipeline (owned by the data pipeline; see trainer/data/loader.py and docs/data.md).

The batch size is not here: it belongs to the step (``train.global_batch_size``); the trainer passes the rows per
process to `trainer.data.loader.make_loader`.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from core.configlib import Frozen
from trainer.data.text import DEFAULT_INSTRUCTION, LANGUAGE_INSTRUCTIONS, PromptStyle, normalize_language


class DataConfig(Frozen):
    dir: str = Field(
        "build/demo/arrayrecord", description="ArrayRecord root holding train/, validation/ and test/ splits."
    )
    buckets: list[tuple[int, int]] = Field(
        default_factory=lambda: [(200, 64), (400, 96), (600, 128)],
        description="Static batch shapes as (audio_frames, text_tokens) pairs, ascending in audio_frames. A "
        "clip goes to the first bucket whose audio_frames (mel frames, 100 per second; a multiple of 100) hold "
        "it; text_tokens must hold the prompt (about 13 audio tokens per second plus the chat scaffolding), the "
        "transcript and <|im_end|>. One compiled step per bucket.",
    )
    min_duration: float = Field(
        0.5, ge=0.0, description="Clips shorter than this many seconds are left out of every split."
    )
    max_duration: float = Field(
        6.0,
        gt=0.0,
        description="Clips longer than this many seconds are left out (at most the largest bucket's audio).",
    )
    source_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Training mixture: dataset_name -> relative share of each epoch (sampled without "
        "replacement while a source has enough clips, then repeated). Empty: every clip once per epoch. "
        "Sources not listed get weight 0. Evaluation splits ignore this.",
    )
    packing: bool = Field(
        False,
        description="Pack several clips into each training row of the largest bucket (best fit over the "
        "shuffled epoch; each clip keeps its own prompt, positions, segment and audio, and the model attends "
        "within a clip only), instead of one clip per row of the first bucket that holds it. Evaluation "
        "never packs. Needs the transcripts in the split's index.npz (written by `sawt data convert`).",
    )
    max_clips_per_row: int = Field(
        16,
        ge=2,
        le=256,
        description="Clip slots of a packed row (the static size of the per-clip audio arrays); a row closes "
        "when they are used up. Only read with packing.",
    )
    shuffle_seed_offset: int = Field(
        0, description="Added to the experiment seed for the data order, to reshuffle without changing init."
    )
    instruction: str = Field(
        DEFAULT_INSTRUCTION, description="Text of the user turn after the audio in the ASR prompt."
    )
    language_instructions: dict[str, str] = Field(
        default_factory=lambda: dict(LANGUAGE_INSTRUCTIONS),
        description="Instruction per language code (ISO-639-1; ar-en: code-switched Arabic/English), used for "
        "records whose language_field names one and by the server's `language` field. The Arabic wording is "
        "the default instruction.",
    )
    language_field: str | None = Field(
        None,
        description="Text feature naming each record's language (a key of language_instructions); a record "
        "with it is prompted with that language's instruction. None: every record gets `instruction`.",
    )
    context_field: str | None = Field(
        None,
        description="Text feature holding a per-record context (a glossary, names, the previous window's text), "
        "put into the prompt as a system turn, as the server does with a request's `prompt`. None: no context.",
    )
    num_threads: int = Field(
        2,
        ge=0,
        description="Grain threads featurising batches (read, decode, log-mel, tokenise) per process.",
    )
    prefetch_batches: int = Field(4, ge=0, description="Batches featurised ahead of the training step.")

    @field_validator("buckets")
    @classmethod
    def _check_buckets(cls, buckets: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if not buckets:
            raise ValueError("at least one bucket is needed")
        for frames, tokens in buckets:
            if frames <= 0 or frames % 100:
                raise ValueError(f"bucket audio_frames {frames} must be a positive multiple of 100")
            if tokens <= 0:
                raise ValueError(f"bucket text_tokens {tokens} must be positive")
        if [b[0] for b in buckets] != sorted({b[0] for b in buckets}):
            raise ValueError("buckets must be strictly ascending in audio_frames")
        return buckets

    @field_validator("source_weights")
    @classmethod
    def _check_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in weights.values()):
            raise ValueError("source weights must be >= 0")
        if weights and sum(weights.values()) <= 0:
            raise ValueError("at least one source weight must be positive")
        return weights

    @field_validator("language_instructions")
    @classmethod
    def _check_languages(cls, table: dict[str, str]) -> dict[str, str]:
        if any(not text.strip() for text in table.values()):
            raise ValueError("every language's instruction must be non-empty")
        return {normalize_language(code): text for code, text in table.items()}

    def prompt_style(self) -> PromptStyle:
        """The run's prompt wording (`trainer.data.text.PromptStyle`)."""
        return PromptStyle(self.instruction, dict(self.language_instructions))

    @model_validator(mode="after")
    def _check_durations(self) -> DataConfig:
        if self.min_duration >= self.max_duration:
            raise ValueError(
                f"min_duration {self.min_duration} must be below max_duration {self.max_duration}"
            )
        largest = self.buckets[-1][0] / 100.0
        if self.max_duration > largest:
            raise ValueError(
                f"max_duration {self.max_duration} s does not fit the largest bucket ({largest:g} s of audio)"
            )
        return self


class TokenizerConfig(Frozen):
    dir: str = Field(
        "build/demo/tfrecord/tokenizer",
        description="Local HF tokenizer directory (tokenizer.json, tokenizer_config.json).",
    )
