"""STAND-IN FOR AN EXTERNAL TEACHER LLM (tests only).

The real teacher is a large chat model behind an OpenAI-compatible endpoint (a hosted API or a vLLM
server), which cannot run here. This small FastAPI app speaks the same `/v1/chat/completions` protocol
over real HTTP, answers with a deterministic reasoning trace built from the transcript in the prompt, and
can inject failures (503, 429, 400) and delays so retries, failure counting and resume can be tested.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class TeacherStub:
    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.calls: Counter[str] = Counter()  # transcript -> requests
        self.fail_first: dict[str, tuple[int, int]] = {}  # transcript -> (failures, status)
        self.lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    async def chat(self, request: Request):
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        m = re.search(r"^Transcript: (.*)$", prompt, flags=re.M)
        transcript = m.group(1).strip() if m else ""
        with self.lock:
            self.calls[transcript] += 1
            n = self.calls[transcript]
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        failures, status = self.fail_first.get(transcript, (0, 0))
        if n <= failures:
            return JSONResponse(
                {"error": {"message": "injected", "type": "server_error"}}, status_code=status
            )
        content = (
            f"<reasoning>\nThe speaker says {len(transcript.split())} words; "
            f"I hear: {transcript}\n</reasoning>\n<answer>\n{transcript}\n</answer>"
        )
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
        }
