"""How many tokens a clip's transcript may take: the generation budget of eval, transcribe, batch-infer, serve.

A fixed ``max_new_tokens`` is either too small for long clips (a 30 s Arabic clip needs ~240 tokens of Qwen's
tokenizer, and a cut hypothesis inflates WER) or wastes decode steps on short ones. The budget instead follows
the audio: ``ceil(seconds x tokens_per_second x margin) + extra``, under a configurable cap, where
``tokens_per_second`` is measured with the tokenizer in use:

* on the run's own training transcripts (their token counts over their durations, the 95th percentile of
  the per-clip rates), recorded at the start of training in ``RUN/model/transcripts.json``;
* for a checkpoint without a run (a converted release), from the tokenizer's tokens per character on a
  sample of Arabic text (`REFERENCE_TEXT`) times a fast Arabic speaking rate (`ARABIC_CHARS_PER_SECOND`).

A hypothesis that reaches its budget without a stop token was cut: callers count and report it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRANSCRIPTS_FILE = "transcripts.json"
# Fast read Modern Standard Arabic: about 3 words of 5-6 letters per second, spaces included. An assumption
# (no measured corpus of real speech here), used only where no training transcripts were measured.
ARABIC_CHARS_PER_SECOND = 18.0
MARGIN = 1.5  # a fast speaker above the 95th percentile, and tokenisation variance
EXTRA_TOKENS = 16  # the stop token, punctuation, and a floor for very short clips
PERCENTILE = 95.0
MIN_CLIP_SECONDS = 1.0  # rates of shorter clips are dominated by silence padding and rounding
# A sample of ordinary Arabic prose (news, weather, travel), to measure a tokenizer's tokens per character.
REFERENCE_TEXT = (
    "أعلنت وزارة الصحة اليوم عن افتتاح مستشفى جديد في شمال المدينة يضم أكثر من مئتي سرير. "
    "ومن المتوقع أن تهطل أمطار غزيرة على المناطق الساحلية خلال عطلة نهاية الأسبوع مع انخفاض ملحوظ في درجات الحرارة. "
    "يغادر القطار المتجه إلى العاصمة في تمام الساعة السابعة والنصف صباحا من المحطة المركزية. "
    "قال المدير إن الشركة ستبدأ العمل على المشروع الجديد في بداية الشهر القادم بعد الانتهاء من الدراسات اللازمة. "
    "يحتفل الطلاب بنهاية العام الدراسي في ساحة المدرسة بحضور أولياء الأمور والمعلمين."
)


@dataclass(frozen=True)
class LengthBudget:
    """The per-clip generation budget.

    Attributes:
        tokens_per_second: transcript tokens per second of audio, with the tokenizer in use.
        source: where the rate came from (for logs and reports).
        cap: the budget never exceeds this (the configured ``max_new_tokens``).
    """

    tokens_per_second: float
    source: str
    cap: int
    margin: float = MARGIN
    extra: int = EXTRA_TOKENS

    def max_new_tokens(self, seconds: float) -> int:
        """The budget of a clip of ``seconds``: at least 1, at most `cap`."""
        bound = math.ceil(max(0.0, seconds) * self.tokens_per_second * self.margin) + self.extra
        return max(1, min(self.cap, bound))


def rate_of(token_counts: list[int], seconds: list[float]) -> float:
    """The `PERCENTILE`-th percentile of per-clip transcript token rates (clips of at least 1 s)."""
    rates = [n / s for n, s in zip(token_counts, seconds, strict=True) if s >= MIN_CLIP_SECONDS]
    if not rates:
        raise ValueError("no clip of at least 1 s to measure a transcript rate on")
    return float(np.percentile(rates, PERCENTILE))


def reference_rate(tok: Any) -> float:
    """Tokens per second of fast Arabic speech for ``tok``: tokens per character of `REFERENCE_TEXT` times
    `ARABIC_CHARS_PER_SECOND`."""
    return len(tok.encode(REFERENCE_TEXT)) / len(REFERENCE_TEXT) * ARABIC_CHARS_PER_SECOND


def measure_split(tok: Any, data_dir: str | Path, split: str = "train", limit: int = 512) -> dict[str, Any]:
    """Measures the transcript rate on up to ``limit`` records of a split (ArrayRecord, `sawt data convert`).

    Returns the record written to ``transcripts.json``: ``tokens_per_second``, ``clips``, ``split``.
    """
    from array_record.python.array_record_module import ArrayRecordReader

    from trainer.data.example import BadRecord, decode_speech
    from trainer.data.shards import split_shards

    counts: list[int] = []
    seconds: list[float] = []
    for shard in split_shards(data_dir, split):
        reader = ArrayRecordReader(str(shard))
        try:
            n = min(reader.num_records(), limit - len(counts))
            for payload in reader.read(list(range(n))) if n > 0 else []:
                try:
                    rec = decode_speech(payload)
                except BadRecord:
                    continue
                counts.append(len(tok.encode(rec.text)))
                seconds.append(rec.duration)
        finally:
            reader.close()
        if len(counts) >= limit:
            break
    return {"tokens_per_second": rate_of(counts, seconds), "clips": len(counts), "split": split}


def budget_for(tok: Any, files_dir: str | Path | None, cap: int) -> LengthBudget:
    """The budget for a checkpoint: its run's measured rate (``transcripts.json`` in its companion files),
    else the reference rate of ``tok``."""
    if files_dir is not None:
        path = Path(files_dir) / TRANSCRIPTS_FILE
        if path.is_file():
            try:
                record = json.loads(path.read_text())
                rate = float(record["tokens_per_second"])
                return LengthBudget(
                    rate, f"{path} ({record.get('clips', '?')} {record.get('split', '')} clips)", cap
                )
            except (ValueError, KeyError, TypeError):
                pass
    return LengthBudget(reference_rate(tok), "reference Arabic text x 18 chars/s", cap)
