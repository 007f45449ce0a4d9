"""OpenAI-compatible request and response shapes (pydantic), and the error body every 4xx/5xx uses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]


class TranscriptionForm(BaseModel):
    """The non-file fields of ``POST /v1/audio/transcriptions`` (multipart form), as OpenAI defines them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str = Field(min_length=1, max_length=256)
    language: str | None = Field(None, max_length=16, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")
    prompt: str | None = Field(None, max_length=4096)
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    stream: bool = False
    timestamp_granularities: list[Literal["segment"]] = Field(
        default_factory=list, alias="timestamp_granularities[]"
    )
    include: list[Literal["logprobs"]] = Field(default_factory=list, alias="include[]")

    @field_validator("temperature", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"nan", "inf", "-inf", "+inf", "infinity"}:
            raise ValueError("temperature must be a finite number")
        return value


class ApiError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_from_validation(err: ValidationError) -> ApiError:
    """The first pydantic error as a 400 naming the offending field."""
    first = err.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
        code = "unknown_parameter"
    else:
        message = f"Invalid value for '{param}': {message}"
        code = "invalid_value"
    return ApiError(400, message, param=param, code=code)
