"""`sawt transcribe`: offline greedy transcription of audio files with a model checkpoint.

Each file is decoded to 16 kHz mono (`decode_audio`), cut into model windows (`trainer.data.silence
.plan_windows`: at most 30 s, or the checkpoint's preprocessor_config.json chunk_length, cut in a pause near
each window's end, else at a fixed length with overlap), and every window becomes one row of a batch: the
ASR prompt (`trainer.data.text`, worded for ``--language``, with ``--prompt`` as context) with the window's
`<|audio_pad|>` run, left-aligned and padded. `greedy_generate` (KV cache, one compiled loop) decodes all
windows of a file at once, and `longform.stitch_windows` joins the windows' token ids. A bad file is reported
on stderr and skipped; the exit code is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_WINDOW_S = 30.0
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
    ) -> Transcriber:
        """Loads the checkpoint (model checkpoint, trainer step or run directory) and its tokenizer."""
        from flax import nnx

        from trainer.data.longform import DEFAULT_OVERLAP_S
        from trainer.data.text import PromptStyle, load_tokenizer
        from trainer.model.params import load_param_tree
        from trainer.model.thinker import Thinker
        from trainer.model_checkpoint import load_model_checkpoint, resolve_checkpoint

        root = resolve_checkpoint(checkpoint)
        config, params = load_model_checkpoint(root)
        if compute_dtype is not None:
            config = config.model_copy(update={"compute_dtype": compute_dtype})
        model = nnx.eval_shape(lambda: Thinker(config, rngs=nnx.Rngs(0)))
        load_param_tree(model, params)
        tok_dir = Path(tokenizer_dir) if tokenizer_dir else find_tokenizer_dir(root, Path(checkpoint))
        tokenizer = load_tokenizer(tok_dir)
        if window_s is None:
            window_s = _processor_window_s(tok_dir) or _processor_window_s(root) or DEFAULT_WINDOW_S
        stops = {tokenizer.im_end_id, tokenizer.endoftext_id, *config.tokens.eos_token_ids}
        return cls(
            model=model,
            tokenizer=tokenizer,
            window_s=float(window_s),
            overlap_s=float(DEFAULT_OVERLAP_S if overlap_s is None else overlap_s),
            stop_ids=tuple(sorted(stops)),
            style=PromptStyle(instruction) if instruction else PromptStyle(),
            cut=cut,
            search_s=search_s,
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
        self, wave: np.ndarray, max_new_tokens: int, language: str | None = None, prompt: str | None = None
    ) -> dict:
        """Transcribes one 16 kHz mono wave; returns text, ids, prompt ids and per-window detail.

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
        ids, counts = greedy_generate(self.model, batch, max_new_tokens, stop_ids=self.stop_ids)
        ids, counts = np.asarray(ids), np.asarray(counts)
        per_window = [[int(t) for t in ids[i, : counts[i]]] for i in range(len(plan))]
        token_ids, _ = stitch_windows(plan, per_window)
        spans = segment_spans(plan, SAMPLE_RATE)
        return {
            "text": self.tokenizer.decode(token_ids),
            "token_ids": token_ids,
            "prompt_token_ids": [t for p in prompts for t in p],
            "audio_seconds": round(len(wave) / SAMPLE_RATE, 3),
            "windows": [
                {
                    "start_s": round(w.start / SAMPLE_RATE, 3),
                    "end_s": round(w.end / SAMPLE_RATE, 3),
                    "overlap_s": round(w.overlap / SAMPLE_RATE, 3),
                    "segment": [round(a, 3), round(b, 3)],
                    "prompt_tokens": len(p),
                    "token_ids": t,
                }
                for w, (a, b), p, t in zip(plan, spans, prompts, per_window, strict=True)
            ],
        }


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, math.ceil(n / multiple) * multiple)


def _processor_window_s(directory: Path) -> float | None:
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("chunk_length")
    except json.JSONDecodeError:
        return None
    return float(value) if value else None


def find_tokenizer_dir(root: Path, given: Path) -> Path:
    """Where the tokenizer of a checkpoint lives: the checkpoint itself, else up the run directory.

    A converted checkpoint carries the tokenizer files; a trainer step directory may not, so we also look
    in the directory the user named, its parents (up to the run directory) and their ``tokenizer/``.
    """
    candidates = [root, given]
    for base in (root, given):
        candidates += list(base.parents)[:3]
    for c in candidates:
        for d in (c, c / "tokenizer"):
            if (d / "tokenizer.json").is_file():
                return d
    raise FileNotFoundError(
        f"{given}: no tokenizer.json in the checkpoint or its run directory; pass --tokenizer DIR"
    )


def main(args: argparse.Namespace) -> int:
    """Entry point of `sawt transcribe` (see sawt/commands/transcribe.py)."""
    from core.errors import UsageError
    from trainer.data.audio_io import AudioError, decode_audio
    from trainer.data.text import TokenizerError, clip_context

    if args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    try:
        transcriber = Transcriber.load(
            args.checkpoint,
            tokenizer_dir=args.tokenizer,
            window_s=args.window_s,
            overlap_s=args.overlap_s,
            instruction=args.instruction,
            cut=args.cut,
            search_s=args.search_s,
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
