"""A tiny real checkpoint for end-to-end tests: random `Thinker` weights (tiny preset) + the demo tokenizer."""

from __future__ import annotations

from pathlib import Path


def make_tiny_checkpoint(out: Path, seed: int = 0, overrides: tuple[str, ...] = ()) -> Path:
    """Writes a model checkpoint directory (docs/interfaces.md §6) with random weights; returns it.

    ``overrides`` are dotted ``key=value`` changes to the tiny preset (e.g. ``model.text.hidden_size=512``).
    """
    from flax import nnx

    from tools.data.synth import read_sentences, tokenizer_training_text, write_tokenizer
    from trainer.config import load_experiment
    from trainer.model.params import param_tree
    from trainer.model.thinker import Thinker
    from trainer.model_checkpoint import save_model_checkpoint

    config = load_experiment("tiny", overrides).model
    tok_dir = out.parent / f"{out.name}-tokenizer"
    write_tokenizer(tokenizer_training_text([s.text for s in read_sentences()]), tok_dir)
    model = Thinker(config, rngs=nnx.Rngs(seed))
    return save_model_checkpoint(out, param_tree(model), config, copy_files_from=tok_dir)
