"""Generation length follows the audio: a 30 s clip's budget holds its transcript; cuts are reported."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tests.helpers.release import release_dir
from trainer.data.length import LengthBudget, rate_of, reference_rate
from trainer.data.text import load_tokenizer

# Arabic read aloud by espeak-ng: about 30 s at its fastest usual rate.
TEXT = (
    "أعلنت الحكومة اليوم عن خطة جديدة لتطوير شبكة النقل العام في المدن الكبرى خلال السنوات الخمس القادمة. "
    "وتشمل الخطة إنشاء خطوط جديدة للحافلات والقطارات وتحسين المحطات القائمة وتخفيض أسعار التذاكر للطلاب. "
    "وقال الوزير في مؤتمر صحفي إن المشروع سيوفر آلاف فرص العمل ويقلل الازدحام في الشوارع الرئيسية. "
    "ومن المتوقع أن يبدأ العمل في المرحلة الأولى مطلع العام المقبل بعد استكمال الدراسات الفنية والمالية."
)


def _espeak_seconds(text: str, words_per_minute: int, tmp_path) -> float:
    import soundfile as sf

    wav = tmp_path / f"clip{words_per_minute}.wav"
    subprocess.run(["espeak-ng", "-v", "ar", "-s", str(words_per_minute), "-w", str(wav), text], check=True)
    data, rate = sf.read(wav)
    return len(data) / rate


@pytest.mark.parametrize("words_per_minute", [175, 230])
def test_a_30s_clip_budget_holds_its_transcript(tmp_path, words_per_minute):
    seconds = _espeak_seconds(TEXT, words_per_minute, tmp_path)
    assert 20 < seconds < 45
    for tok in (load_tokenizer(release_dir()),):
        budget = LengthBudget(reference_rate(tok), "reference", cap=448)
        needed = len(tok.encode(TEXT)) + 1  # + <|im_end|>
        assert budget.max_new_tokens(seconds) > needed, (seconds, needed, budget)
        assert budget.max_new_tokens(seconds) < 3 * needed  # and not absurdly more


def test_budget_follows_duration_under_the_cap():
    budget = LengthBudget(8.0, "x", cap=200)
    assert budget.max_new_tokens(1.0) == 12 + 16
    assert budget.max_new_tokens(10.0) == 120 + 16
    assert budget.max_new_tokens(30.0) == 200  # capped
    assert budget.max_new_tokens(0.0) == 16


def test_rate_is_a_high_percentile_of_clips_of_a_second_or_more():
    counts, seconds = [10, 20, 30, 40, 500], [2.0, 2.0, 2.0, 2.0, 0.5]
    assert rate_of(counts, seconds) == pytest.approx(np.percentile([5, 10, 15, 20], 95))
    with pytest.raises(ValueError, match="at least 1 s"):
        rate_of([3], [0.2])


def test_measured_on_a_split(corpus, tokenizer):
    from trainer.data.length import measure_split

    got = measure_split(tokenizer, corpus.arrayrecord)
    assert got["clips"] > 10 and got["split"] == "train"
    assert 1.0 < got["tokens_per_second"] < 40.0
