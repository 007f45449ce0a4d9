"""`sawt transcribe`: offline greedy transcription of audio files with a model checkpoint.

Each file is decoded to 16 kHz mono (`decode_audio`), cut into model windows (`trainer.data.silence
.plan_windows`: at most 30 s as in the server, cut in a pause near each window's end, else at a fixed length
with overlap; the preprocessor's ``chunk_length``, 300 s in the release, only pads features), and every window becomes one row of a batch: the
ASR prompt (`trainer.data.text`, worded for ``--language``, with ``--prompt`` as context) with the window's
`<|audio_pad|>` run, left-aligned and padded. `greedy_generate` (KV cache, one compiled loop) decodes all
windows of a file at once, each window under its own length budget (`trainer.data.length`; a cut is
reported), and `longform.stitch_windows` joins the windows' token ids. The tokenizer and the prompt's wording
are the ones the checkpoint's run trained with (`checkpoint_prompt`). A bad file is reported on stderr and
skipped; the exit code is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Prompt widths and mel widths are rounded up to these, so files of similar length share a compiled program.
SEQ_BUCKET = 64
MEL_BUCKET = 500


@dataclass
class Transcriber:
    """A loaded checkpoint, ready to transcribe waves.

    Attributes:
        model: the `Thinker` with the checkpoint's weights.
        tokenizer: the `trainer.data.text.Tokenizer` found next to the checkpoint.
        window_s, overlap_s: long-audio windowing (see `trainer.data.silence`).
        stop_ids: ids that end a hypothesis.
        style: the prompt's wording (`trainer.data.text.PromptStyle`).
        cut, search_s: where long audio is cut (`trainer.data.silence.plan_windows`).
        budget: each window's generation budget (`trainer.data.length.LengthBudget`).
        max_context_tokens: most tokens of ``--prompt`` kept as context.
    """

    model: object
    tokenizer: object
    window_s: float
    overlap_s: float
    stop_ids: tuple[int, ...]
    style: object  # trainer.data.text.PromptStyle
    cut: str = "silence"
    search_s: float = 5.0
    max_context_tokens: int = 224
    budget: object = None
    compiled_shapes: set = field(default_factory=set)

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        *,
        tokenizer_dir: str | Path | None = None,
        window_s: float | None = None,
        overlap_s: float | None = None,
        instruction: str | None = None,
        compute_dtype: str | None = None,
        cut: str = "silence",
        search_s: float = 5.0,
        max_new_tokens: int = 448,
    ) -> Transcriber:
        """Loads the checkpoint (model checkpoint, trainer step or run directory: its best step by validation
        WER, else its latest) with the tokenizer and prompt wording its run trained with (`checkpoint_prompt`);
        ``max_new_tokens`` caps each window's length budget."""
        from flax import nnx

        from trainer.data.length import budget_for
        from trainer.data.longform import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S
        from trainer.model.params import load_param_tree
        from trainer.model.thinker import Thinker
        from trainer.model_checkpoint import (
            checkpoint_prompt,
            companion_dir,
            load_model_checkpoint,
            resolve_checkpoint,
        )

        root = resolve_checkpoint(checkpoint)
        config, params = load_model_checkpoint(root)
        if compute_dtype is not None:
            config = config.model_copy(update={"compute_dtype": compute_dtype})
        model = nnx.eval_shape(lambda: Thinker(config, rngs=nnx.Rngs(0)))
        load_param_tree(model, params)
        prompt = checkpoint_prompt(
            root, config, tokenizer_dir=tokenizer_dir, instruction=instruction, given=checkpoint
        )
        tokenizer = prompt.tokenizer
        if window_s is None:
            window_s = DEFAULT_WINDOW_S
        stops = {tokenizer.im_end_id, tokenizer.endoftext_id, *config.tokens.eos_token_ids}
        return cls(
            model=model,
            tokenizer=tokenizer,
            window_s=float(window_s),
            overlap_s=float(DEFAULT_OVERLAP_S if overlap_s is None else overlap_s),
            stop_ids=tuple(sorted(stops)),
            style=prompt.style,
            cut=cut,
            search_s=search_s,
            budget=budget_for(tokenizer, companion_dir(checkpoint, root), cap=max_new_tokens),
        )

    def make_batch(
        self, windows: list[np.ndarray], instruction: str | None = None, context: str | None = None
    ) -> tuple[dict, list[list[int]]]:
        """The prompt batch for a list of waves (one row each) and each row's prompt ids."""
        from trainer.data.audio import log_mel
        from trainer.data.text import asr_prompt_ids
        from trainer.model.geometry import encoder_token_count

        cfg = self.model.config
        mels = [log_mel(w) for w in windows]
        frames = [m.shape[1] for m in mels]
        n_audio = [int(encoder_token_count(f, cfg.audio.n_window)) for f in frames]
        instruction = instruction or self.style.instruction
        prompts = [asr_prompt_ids(self.tokenizer, n, instruction, context) for n in n_audio]
        b = len(windows)
        width = _round_up(max(len(p) for p in prompts), SEQ_BUCKET)
        mel_width = _round_up(max(frames), MEL_BUCKET)
        input_ids = np.zeros((b, width), np.int32)
        token_mask = np.zeros((b, width), bool)
        audio_mel = np.zeros((b, mels[0].shape[0], mel_width), np.float32)
        offsets = np.zeros((b,), np.int32)
        for i, (p, m) in enumerate(zip(prompts, mels, strict=True)):
            input_ids[i, : len(p)] = p
            token_mask[i, : len(p)] = True
            audio_mel[i, :, : m.shape[1]] = m
            offsets[i] = p.index(self.tokenizer.audio_pad_id) if n_audio[i] else 0
        positions = np.where(token_mask, np.cumsum(token_mask, axis=1) - 1, 0).astype(np.int32)
        batch = {
            "input_ids": input_ids,
            "token_mask": token_mask,
            "positions": positions,
            "audio_mel": audio_mel,
            "audio_frames": np.asarray(frames, np.int32),
            "audio_tokens": np.asarray(n_audio, np.int32),
            "audio_offset": offsets,
        }
        return batch, prompts

    def transcribe_wave(
        self,
        wave: np.ndarray,
        max_new_tokens: int | None = None,
        language: str | None = None,
        prompt: str | None = None,
    ) -> dict:
        """Transcribes one 16 kHz mono wave; returns text, ids, prompt ids and per-window detail.

        Each window's budget follows its duration (`budget`, capped; ``max_new_tokens`` fixes it instead); a
        window that reaches it without a stop token was cut, and ``cut_windows`` counts those.

        Raises:
            PromptError: an unsupported ``language``, or a ``prompt`` holding special tokens.
        """
        from trainer.data.audio_io import SAMPLE_RATE
        from trainer.data.longform import stitch_windows
        from trainer.data.silence import plan_windows, segment_spans
        from trainer.data.text import clip_context
        from trainer.model.generate import greedy_generate

        instruction = self.style.instruction_for(language)
        context = clip_context(self.tokenizer, prompt, self.max_context_tokens)
        plan = plan_windows(wave, self.window_s, self.overlap_s, cut=self.cut, search_s=self.search_s)
        batch, prompts = self.make_batch([wave[w.start : w.end] for w in plan], instruction, context)
        if max_new_tokens is not None:
            budgets = [max_new_tokens] * len(plan)
            steps = max_new_tokens
        else:
            budgets = [self.budget.max_new_tokens((w.end - w.start) / SAMPLE_RATE) for w in plan]
            # One compiled loop per budget bucket; each row is held to its own budget.
            steps = min(self.budget.cap, _round_up(max(budgets), 32))
        ids, counts = greedy_generate(self.model, batch, steps, stop_ids=self.stop_ids)
        ids, counts = np.asarray(ids), np.asarray(counts)
        per_window = [[int(t) for t in ids[i, : min(counts[i], budgets[i])]] for i in range(len(plan))]
        # Cut: more tokens than its budget, or the whole loop without a stop token.
        cut = [bool(counts[i] > budgets[i] or counts[i] == budgets[i] == steps) for i in range(len(plan))]
        token_ids, _ = stitch_windows(plan, per_window)
        spans = segment_spans(plan, SAMPLE_RATE)
        return {
            "text": self.tokenizer.decode(token_ids),
            "token_ids": token_ids,
            "prompt_token_ids": [t for p in prompts for t in p],
            "audio_seconds": round(len(wave) / SAMPLE_RATE, 3),
            "cut_windows": int(sum(cut)),
            "windows": [
                {
                    "start_s": round(w.start / SAMPLE_RATE, 3),
                    "end_s": round(w.end / SAMPLE_RATE, 3),
                    "overlap_s": round(w.overlap / SAMPLE_RATE, 3),
                    "segment": [round(a, 3), round(b, 3)],
                    "prompt_tokens": len(p),
                    "token_ids": t,
                    "max_new_tokens": n,
                    "cut": c,
                }
                for w, (a, b), p, t, n, c in zip(plan, spans, prompts, per_window, budgets, cut, strict=True)
            ],
        }


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, math.ceil(n / multiple) * multiple)


def main(args: argparse.Namespace) -> int:
    """Entry point of `sawt transcribe` (see sawt/commands/transcribe.py)."""
    from core.errors import UsageError
    from trainer.data.audio_io import AudioError, decode_audio
    from trainer.data.text import TokenizerError, clip_context

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    if args.max_length_cap < 1:
        raise UsageError("--max-length-cap must be at least 1")
    try:
        transcriber = Transcriber.load(
            args.checkpoint,
            tokenizer_dir=args.tokenizer,
            window_s=args.window_s,
            overlap_s=args.overlap_s,
            instruction=args.instruction,
            cut=args.cut,
            search_s=args.search_s,
            max_new_tokens=args.max_length_cap,
        )
        # Refuse a bad --language or --prompt before any file is read.
        transcriber.style.instruction_for(args.language)
        clip_context(transcriber.tokenizer, args.prompt, transcriber.max_context_tokens)
    except (TokenizerError, ValueError) as err:
        raise UsageError(str(err)) from None
    failed = 0
    for path in args.audio:
        try:
            wave = decode_audio(path)
            result = transcriber.transcribe_wave(wave, args.max_new_tokens, args.language, args.prompt)
            if result["cut_windows"]:
                print(
                    f"sawt transcribe: warning: {path}: {result['cut_windows']} of {len(result['windows'])} "
                    "windows reached their length budget without an end token (raise --max-length-cap, or "
                    "set --max-new-tokens)",
                    file=sys.stderr,
                )
        except (AudioError, ValueError) as err:
            failed += 1
            msg = str(err) if str(path) in str(err) else f"{path}: {err}"
            print(f"sawt transcribe: error: {msg}", file=sys.stderr)
            continue
        if args.output == "json":
            print(json.dumps({"file": str(path), **result}, ensure_ascii=False), flush=True)
        else:
            print(f"{path}\t{result['text']}", flush=True)
    if failed:
        print(f"sawt transcribe: {failed} of {len(args.audio)} files failed", file=sys.stderr)
    return 1 if failed else 0
