"""`language` and `prompt` condition decoding: each reaches the prompt ids the model is prefilled with.

Over real HTTP with the official `openai` client, the real `ModelEngine` and the demo tokenizer (from the
tiny checkpoint), and a runner that records what it is asked to prefill in place of the model: the assertion
is on the prompt ids, which `trainer.data.text` builds for training too.
"""

from __future__ import annotations

import openai
import pytest
from helpers.serving import RecordingRunner, serve_in_thread, wav_bytes
from prometheus_client import CollectorRegistry

from inference_server.app import build_app
from inference_server.config import ServerConfig
from inference_server.model_engine import ModelEngine, TextSide
from trainer.data.audio import num_frames
from trainer.data.text import LANGUAGE_INSTRUCTIONS, asr_prompt_ids, load_tokenizer
from trainer.model.geometry import encoder_token_count

MODEL = "sawt-asr"


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    tok = load_tokenizer(tiny_checkpoint)
    runner = RecordingRunner(tok.im_end_id)
    text_side = TextSide.from_tokenizer_dir(str(tiny_checkpoint), max_context_tokens=16)
    engine = ModelEngine(lambda: runner, text_side, model_name=MODEL, n_window=50)
    app = build_app(ServerConfig(model_name=MODEL), engine, registry=CollectorRegistry())
    with serve_in_thread(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0), runner, tok


def _expected(tok, seconds: float, instruction: str, context: str | None = None) -> list[int]:
    n_audio = int(encoder_token_count(num_frames(int(seconds * 16000))))
    return asr_prompt_ids(tok, n_audio, instruction, context)


def test_language_and_prompt_reach_the_prompt_ids(served):
    client, runner, tok = served
    audio = ("a.wav", wav_bytes(1.0))
    cases = [
        ({}, LANGUAGE_INSTRUCTIONS["ar"], None),
        ({"language": "en"}, LANGUAGE_INSTRUCTIONS["en"], None),
        ({"language": "ar-en"}, LANGUAGE_INSTRUCTIONS["ar-en"], None),
        ({"prompt": "سلمى ويوسف"}, LANGUAGE_INSTRUCTIONS["ar"], "سلمى ويوسف"),
        ({"language": "en", "prompt": "Salma"}, LANGUAGE_INSTRUCTIONS["en"], "Salma"),
    ]
    seen = []
    for fields, instruction, context in cases:
        before = len(runner.prefills)
        out = client.audio.transcriptions.create(model=MODEL, file=audio, **fields)
        (prompt,) = runner.prefills[before:]
        assert prompt.input_ids.tolist() == _expected(tok, 1.0, instruction, context), fields
        # usage reports what was prefilled, as OpenAI splits it.
        assert out.usage.input_tokens == len(prompt.input_ids)
        assert out.usage.input_token_details.audio_tokens == prompt.audio_tokens
        assert out.usage.input_token_details.text_tokens == len(prompt.input_ids) - prompt.audio_tokens
        seen.append(tuple(prompt.input_ids.tolist()))
    assert len(set(seen)) == len(cases)  # every field changed the prompt


def test_a_long_prompt_keeps_its_end(served):
    client, runner, tok = served
    words = " ".join(f"كلمة{i}" for i in range(60))
    client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_bytes(1.0)), prompt=words)
    system = tok.decode(runner.prefills[-1].input_ids, skip_special_tokens=False).split("<|im_end|>")[0]
    kept = system.removeprefix("<|im_start|>system\n")
    assert words.endswith(kept) and 0 < len(tok.encode(kept)) <= 16 and "كلمة59" in kept


def test_unknown_language_and_special_tokens_are_400s(served):
    client, _, _ = served
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_bytes(1.0)), language="fr")
    body = err.value.body
    assert body["param"] == "language" and body["code"] == "unsupported_language"
    assert "supported: ar, ar-en, en" in body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_bytes(1.0)), prompt="<|im_end|>")
    assert err.value.body["param"] == "prompt" and "<|im_end|>" in err.value.body["message"]
