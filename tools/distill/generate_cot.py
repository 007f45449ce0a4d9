"""`sawt distill generate-cot`: ask an OpenAI-compatible chat endpoint for a reasoning trace per sample.

For each record of the split, the prompt template (Jinja2, `tools/distill/prompts/cot_asr.jinja` by
default) is rendered with the transcript and metadata and sent to ``TEACHER_URL/chat/completions``. The reply
is split into reasoning and answer (``<reasoning>``/``<answer>`` tags, ``<think>`` tags, or the
``reasoning_content`` field that reasoning servers such as vLLM return).

Durability: each finished item is appended to ``OUT/cot.jsonl`` and fsynced before it counts
(`DurableJsonl`); a re-run skips ids already there, so a killed run loses nothing finished. Transient errors
(connection errors, timeouts, 429, 5xx) are retried with exponential backoff and jitter; an item that still
fails is appended to ``OUT/failures.jsonl`` (retried by the next run) and counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.fileio import DurableJsonl, atomic_write_json, read_jsonl

log = logging.getLogger("sawt.distill")

DEFAULT_TEMPLATE = Path(__file__).parent / "prompts" / "cot_asr.jinja"
COT_FILE = "cot.jsonl"
FAILURES_FILE = "failures.jsonl"


class TeacherError(Exception):
    """The teacher's reply cannot be used (permanent: not retried)."""


@dataclass(frozen=True)
class Item:
    sample_id: str
    dataset_name: str
    transcript: str
    duration: float


def load_template(path: str | Path | None):
    import jinja2

    path = Path(path) if path else DEFAULT_TEMPLATE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt template not found")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    try:
        return env.from_string(path.read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"{path}:{err.lineno}: template syntax error: {err.message}") from None


_TAGS = (("<reasoning>", "</reasoning>"), ("<think>", "</think>"))


def _between(text: str, start: str, end: str) -> str | None:
    m = re.search(re.escape(start) + r"(.*?)" + re.escape(end), text, flags=re.S)
    return m.group(1).strip() if m else None


def parse_reply(content: str, reasoning_content: str | None = None) -> tuple[str, str]:
    """(reasoning, answer) from a teacher reply.

    Raises:
        TeacherError: no reasoning could be found.
    """
    content = content or ""
    answer = _between(content, "<answer>", "</answer>")
    reasoning = reasoning_content.strip() if reasoning_content else None
    for start, end in _TAGS:
        if reasoning:
            break
        reasoning = _between(content, start, end)
    if answer is None:
        answer = content
        for start, end in (*_TAGS, ("<answer>", "</answer>")):
            answer = re.sub(re.escape(start) + r".*?" + re.escape(end), "", answer, flags=re.S)
        answer = answer.replace("<answer>", "").strip()
    if not reasoning:
        raise TeacherError("the reply has no reasoning (expected <reasoning>...</reasoning>)")
    return reasoning, answer.strip()


def _retryable(err: BaseException) -> bool:
    import openai

    if isinstance(err, openai.APIStatusError):
        return err.status_code == 429 or err.status_code >= 500 or err.status_code == 408
    return isinstance(err, openai.APIConnectionError | openai.APITimeoutError | TimeoutError)


async def ask(
    client: Any, model: str, prompt: str, *, temperature: float, max_tokens: int
) -> tuple[str, str]:
    reply = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=temperature,
        max_tokens=max_tokens,
    )
    if not reply.choices:
        raise TeacherError("the reply has no choices")
    message = reply.choices[0].message
    extra = getattr(message, "reasoning_content", None) or (message.model_extra or {}).get(
        "reasoning_content"
    )
    return parse_reply(message.content or "", extra)


def read_items(data: str, split: str | None) -> tuple[list[Item], int]:
    """Samples of the split (id, source, transcript, duration) and the number of undecodable records."""
    from trainer.data.example import BadRecord, decode_speech
    from trainer.data.shards import iter_split

    items, bad = [], 0
    for ref, payload in iter_split(data, split):
        try:
            rec = decode_speech(payload, expected_rate=None)
        except BadRecord as err:
            log.warning("%s record %d: %s", ref.shard.name, ref.index, err)
            bad += 1
            continue
        items.append(Item(rec.sample_id, rec.dataset_name, rec.text, float(rec.duration)))
    return items, bad


async def generate(
    items: list[Item],
    out: Path,
    *,
    teacher_url: str,
    model: str,
    template: Any,
    concurrency: int = 8,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 120.0,
    temperature: float = 0.6,
    max_tokens: int = 2048,
    api_key: str | None = None,
) -> dict[str, int]:
    """Asks the teacher for every item not yet in ``OUT/cot.jsonl``; returns counts."""
    import openai

    from core.progress import progress

    out.mkdir(parents=True, exist_ok=True)
    done = {str(r["sample_id"]) for r in read_jsonl(out / COT_FILE)}
    todo = [it for it in items if it.sample_id not in done]
    counts = {"total": len(items), "skipped": len(items) - len(todo), "done": 0, "failed": 0, "retries": 0}
    client = openai.AsyncOpenAI(
        base_url=teacher_url, api_key=api_key or "none", max_retries=0, timeout=timeout_s
    )
    slots = asyncio.Semaphore(concurrency)
    bar = progress(total=len(todo), desc="generate-cot", unit="sample")

    with DurableJsonl(out / COT_FILE) as sink, DurableJsonl(out / FAILURES_FILE) as failures:

        async def one(item: Item) -> None:
            prompt = template.render(
                transcript=item.transcript, dataset_name=item.dataset_name, duration=item.duration,
                sample_id=item.sample_id, metadata=None,
            )  # fmt: skip
            async with slots:
                error = ""
                for attempt in range(1, retries + 2):
                    try:
                        reasoning, answer = await ask(
                            client, model, prompt, temperature=temperature, max_tokens=max_tokens
                        )
                    except Exception as err:
                        error = f"{type(err).__name__}: {err}"
                        if attempt <= retries and _retryable(err):
                            counts["retries"] += 1
                            # Full jitter: concurrent workers hitting a rate limit spread out their retries.
                            await asyncio.sleep(random.uniform(0, backoff_s * 2 ** (attempt - 1)))
                            continue
                        break
                    sink.append(
                        {
                            "sample_id": item.sample_id, "dataset_name": item.dataset_name,
                            "transcript": item.transcript, "reasoning": reasoning, "answer": answer,
                            "teacher_model": model, "attempts": attempt, "time": time.time(),
                        }
                    )  # fmt: skip
                    counts["done"] += 1
                    bar.update(1)
                    return
                failures.append({"sample_id": item.sample_id, "error": error[:500], "time": time.time()})
                counts["failed"] += 1
                bar.update(1)

        try:
            await asyncio.gather(*(one(it) for it in todo))
        finally:
            bar.close()
            await client.close()
    atomic_write_json(out / "summary.json", counts)
    return counts
