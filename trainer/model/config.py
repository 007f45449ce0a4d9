"""Model configs: one sub-config per module, so modules never read a global config."""

from __future__ import annotations

from pydantic import Field

from sawt.configlib import Frozen


class ModelConfig(Frozen):
    name: str = Field("tiny", description="Human-readable name of the architecture preset.")
