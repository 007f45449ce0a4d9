"""Server settings: one typed model, loadable from YAML and ``key=value`` overrides; `sawt serve`'s flags are
generated from it (`core.flags`), so each setting is declared, typed and described here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from core import configlib
from core.configlib import Frozen
from core.errors import ConfigError


class ServerConfig(Frozen):
    checkpoint: str | None = Field(
        None, description="Model checkpoint directory, trainer run directory or step directory to serve."
    )
    host: str = Field("127.0.0.1", description="Interface to bind (0.0.0.0 in a container).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port of the API, /metrics, /health and /ready.")
    api_key_env: str | None = Field(
        None,
        description="Require 'Authorization: Bearer <key>' on /v1/*, the key read from this environment "
        "variable (never a flag value, so it is not in ps or logs).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    access_log: bool = Field(
        False, description="Log one line per HTTP request (uvicorn's access log; never the headers)."
    )
    model_name: str = Field(
        "sawt-asr", description="Model id reported by /v1/models and accepted in requests."
    )
    max_batch: int = Field(8, ge=1, description="Decode slots: requests decoded together in one batch.")
    max_queue: int = Field(64, ge=0, description="Requests allowed to wait for a slot; past it, 429.")
    max_body_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Largest accepted request body (413).")
    max_audio_seconds: float = Field(
        3600.0, gt=0, description="Longest accepted audio; longer audio is refused with 400."
    )
    request_timeout_s: float = Field(300.0, gt=0, description="Per-request deadline; past it, 504.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with 429 responses.")
    window_s: float = Field(30.0, gt=0, description="Audio per model window; longer audio is windowed.")
    overlap_s: float = Field(
        4.0, ge=0, description="Audio shared by consecutive windows at a fixed cut (their texts are merged)."
    )
    cut: Literal["silence", "fixed"] = Field(
        "silence",
        description="Where long audio is cut: silence = in the quietest pause of each window's last search_s "
        "seconds (no overlap; a fixed cut where there is no pause); fixed = every window_s - overlap_s seconds.",
    )
    search_s: float = Field(5.0, ge=0, description="How far back from a window's end a pause is looked for.")
    max_windows_per_request: int = Field(
        4,
        ge=1,
        description="Most windows of one request decoding at once, so that a long upload leaves slots to "
        "short requests (a bound above max_batch does not bind).",
    )
    max_prompt_tokens: int = Field(
        224,
        ge=0,
        description="Most tokens of a request's `prompt` kept as context (its end, as Whisper keeps 224); "
        "0 refuses requests with a prompt. Prefill compiles a second prompt width per audio bucket for it.",
    )
    max_new_tokens: int = Field(
        448,
        ge=1,
        description="Cap of each audio window's generation budget (the budget follows the window's duration: "
        "trainer/data/length.py); it also sizes the KV cache.",
    )
    tensor_parallel: int = Field(
        1, ge=1, description="Chips of this host the weights are sharded over (tensor axis); 4 on a v4-8."
    )
    drain_grace_s: float = Field(30.0, ge=0, description="On SIGTERM, time allowed for in-flight requests.")

    @model_validator(mode="after")
    def _overlap_below_window(self) -> ServerConfig:
        if self.overlap_s >= self.window_s:
            raise ValueError(
                f"overlap_s ({self.overlap_s:g}) must be shorter than window_s ({self.window_s:g})"
            )
        return self


def load_server_config(
    source: str | Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """The defaults, then the YAML file ``source``, then ``key=value`` overrides, then ``flags`` (later wins).

    Raises:
        ConfigError: a missing file, an unknown key or a bad value, named by its key.
    """
    tree: dict[str, Any] = {}
    where = []
    if source is not None:
        if not Path(source).is_file():
            raise ConfigError(f"server config {source} does not exist")
        tree = configlib.load_yaml_tree(source, Path(source).parent)
        where.append(str(source))
    for text in overrides:
        key, value = configlib.parse_override(text)
        configlib.set_dotted(tree, key, value)
    if overrides:
        where.append("overrides")
    tree.update(flags or {})
    if flags:
        where.append("flags")
    return configlib.build(ServerConfig, tree, " + ".join(where) or "defaults")
