"""A tiny real corpus shared by the data tests: espeak-ng synthesis, then the real converter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

N_CLIPS = 36


@dataclass(frozen=True)
class Corpus:
    tfrecord: Path  # `sawt data synth` output (TFRecord shards + tokenizer/)
    arrayrecord: Path  # `sawt data convert` output
    tokenizer: Path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    from sawt.cli import main

    root = tmp_path_factory.mktemp("corpus")
    tfrecord, arrayrecord = root / "tfrecord", root / "arrayrecord"
    assert main(["data", "synth", "--out", str(tfrecord), "--n", str(N_CLIPS), "--seed", "3"]) == 0
    assert main(["data", "convert", "--src", str(tfrecord), "--dst", str(arrayrecord), "--workers", "1"]) == 0
    return Corpus(tfrecord, arrayrecord, tfrecord / "tokenizer")


@pytest.fixture(scope="session")
def tokenizer(corpus: Corpus):
    from trainer.data.text import load_tokenizer

    return load_tokenizer(corpus.tokenizer)
