"""Config of the input pipeline (owned by the data pipeline; see trainer/data/loader.py)."""

from __future__ import annotations

from pydantic import Field

from sawt.configlib import Frozen


class DataConfig(Frozen):
    dir: str = Field(
        "build/demo/arrayrecord", description="ArrayRecord root holding train/, validation/ and test/ splits."
    )


class TokenizerConfig(Frozen):
    dir: str = Field(
        "build/demo/tfrecord/tokenizer",
        description="Local HF tokenizer directory (tokenizer.json, tokenizer_config.json).",
    )
