"""Transcript renderings for ``response_format``: json, text, verbose_json (with segments), srt, vtt."""

from __future__ import annotations

import zlib
from typing import Any

from inference_server.engine import Finished


def _timestamp(seconds: float, decimal: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def _compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw))) if raw else 0.0


def usage(result: Finished) -> dict[str, Any]:
    """Token usage as OpenAI's API reports it for token-billed models (`openai.types.audio.transcription
    .UsageTokens`): every window's prompt counts as input, split into its audio placeholders and the rest."""
    stats = result.stats
    return {
        "type": "tokens",
        "input_tokens": stats.prompt_tokens,
        "input_token_details": {
            "audio_tokens": stats.audio_tokens,
            "text_tokens": stats.prompt_tokens - stats.audio_tokens,
        },
        "output_tokens": stats.generation_tokens,
        "total_tokens": stats.prompt_tokens + stats.generation_tokens,
    }


def duration_usage(result: Finished) -> dict[str, Any]:
    """Duration usage as OpenAI reports it for verbose_json (`TranscriptionVerbose.usage`): audio seconds."""
    return {"type": "duration", "seconds": round(result.stats.audio_seconds, 3)}


def as_json(result: Finished) -> dict[str, Any]:
    return {"text": result.text, "usage": usage(result)}


def as_verbose_json(result: Finished, temperature: float) -> dict[str, Any]:
    segments = [
        {
            "id": i,
            "seek": round(seg.start * 100),  # in 10 ms frames, as Whisper counts
            "start": round(seg.start, 3),
            "end": round(seg.end, 3),
            "text": seg.text,
            "tokens": list(seg.tokens),
            "temperature": temperature,
            "avg_logprob": 0.0,  # not computed; present because clients expect the key
            "compression_ratio": round(_compression_ratio(seg.text), 3),
            "no_speech_prob": 0.0,
        }
        for i, seg in enumerate(result.segments)
    ]
    return {
        "task": "transcribe",
        "language": result.language or "",
        "duration": round(result.stats.audio_seconds, 3),
        "text": result.text,
        "segments": segments,
        "usage": duration_usage(result),
    }


def as_srt(result: Finished) -> str:
    blocks = []
    for i, seg in enumerate((s for s in result.segments if s.text.strip()), start=1):
        blocks.append(
            f"{i}\n{_timestamp(seg.start, ',')} --> {_timestamp(seg.end, ',')}\n{seg.text.strip()}\n"
        )
    return "\n".join(blocks)


def as_vtt(result: Finished) -> str:
    lines = ["WEBVTT", ""]
    for seg in result.segments:
        if seg.text.strip():
            lines += [f"{_timestamp(seg.start, '.')} --> {_timestamp(seg.end, '.')}", seg.text.strip(), ""]
    return "\n".join(lines)
