"""The experiment config: every section of a training or evaluation run, loaded from a preset.

Presets live in trainer/configs/*.yaml; `sawt train --config tiny train.steps=10` loads one and applies
dotted overrides (see sawt.configlib).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from sawt import configlib
from sawt.configlib import Frozen
from trainer.data.config import DataConfig, TokenizerConfig
from trainer.model.config import ModelConfig

PRESETS_DIR = Path(__file__).parent / "configs"


class ExperimentConfig(Frozen):
    seed: int = Field(0, description="Seed for parameter init, data order and sampling.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Architecture of the thinker.")
    data: DataConfig = Field(default_factory=DataConfig, description="Input pipeline.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Tokenizer location.")


def load_experiment(
    source: str | Path | None, overrides: tuple[str, ...] | list[str] = ()
) -> ExperimentConfig:
    """Loads a preset name or YAML path, then applies ``key=value`` overrides."""
    return configlib.load(ExperimentConfig, source, overrides, PRESETS_DIR)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
