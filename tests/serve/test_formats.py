"""Response renderings: usage as OpenAI reports it, and segment times in verbose_json, srt and vtt.

The shapes are checked against the `openai` package's own response types, the client users parse with.
"""

from __future__ import annotations

from openai.types.audio import Transcription, TranscriptionVerbose
from openai.types.audio.transcription_text_done_event import TranscriptionTextDoneEvent

from inference_server import formats
from inference_server.engine import Finished, RequestStats, Segment


def _result() -> Finished:
    stats = RequestStats(
        arrival=0.0, prompt_tokens=420, audio_tokens=390, generation_tokens=57, audio_seconds=71.5
    )
    segments = (
        Segment(0.0, 28.34, "أول جملة", (11, 12)),
        Segment(28.34, 55.0, "الجملة الثانية", (13,)),
        Segment(55.0, 71.5, "", ()),  # a silent window: no subtitle block
    )
    return Finished("أول جملة الجملة الثانية", "stop", segments, stats, "ar")


def test_json_usage_is_openais_token_usage():
    body = formats.as_json(_result())
    parsed = Transcription.model_validate(body)
    assert parsed.usage.type == "tokens"
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (
        420,
        57,
        477,
    )
    assert parsed.usage.input_token_details.audio_tokens == 390
    assert parsed.usage.input_token_details.text_tokens == 30
    done = TranscriptionTextDoneEvent.model_validate(
        {"type": "transcript.text.done", "text": body["text"], "usage": formats.usage(_result())}
    )
    assert done.usage.input_token_details.audio_tokens == 390


def test_verbose_json_segments_carry_start_and_end_and_duration_usage():
    parsed = TranscriptionVerbose.model_validate(formats.as_verbose_json(_result(), 0.0))
    assert [(s.start, s.end) for s in parsed.segments] == [(0.0, 28.34), (28.34, 55.0), (55.0, 71.5)]
    assert [s.seek for s in parsed.segments] == [0, 2834, 5500]
    assert parsed.usage.type == "duration" and parsed.usage.seconds == 71.5 and parsed.duration == 71.5
    assert parsed.language == "ar"


def test_srt_and_vtt_use_the_segment_times():
    assert formats.as_srt(_result()) == (
        "1\n00:00:00,000 --> 00:00:28,340\nأول جملة\n\n2\n00:00:28,340 --> 00:00:55,000\nالجملة الثانية\n"
    )
    assert formats.as_vtt(_result()) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:28.340\nأول جملة\n\n00:00:28.340 --> 00:00:55.000\nالجملة الثانية\n"
    )
