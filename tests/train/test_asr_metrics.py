"""The Arabic normaliser against hand-made cases, and WER/CER aggregation."""

import pytest

from trainer.asr_metrics import normalize_arabic, score


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("مَرْحَبًا بِكُمْ", "مرحبا بكم"),  # harakat and tanwin stripped
        ("شدّة", "شدة"),  # shadda stripped, ة kept
        ("أحمد إلى آخر", "احمد الى اخر"),  # hamza alefs folded, ى kept
        ("مؤمن سائل", "مومن سايل"),  # ؤ -> و, ئ -> ي
        ("سماء شيء", "سما شي"),  # bare hamza removed
        ("كيف حالك؟ بخير، شكرا؛ نعم.", "كيف حالك بخير شكرا نعم"),  # Arabic and ASCII punctuation
        ("عام ٢٠٢٤ و۳", "عام 2024 و3"),  # Eastern Arabic and Persian digits
        ("مدرسة مستشفى", "مدرسة مستشفى"),  # no ة->ه, no ى->ي
        ("  كلمة\t\nأخرى  ", "كلمة اخرى"),  # white space collapsed
        ("جميـــل", "جميل"),  # tatweel removed
        ("Hello, World!", "hello world"),
        ("", ""),
    ],
)
def test_normalize_arabic(raw, expected):
    assert normalize_arabic(raw) == expected


def test_score_identical_after_normalisation_is_zero():
    out = score(["مَرْحَبًا، بِكُمْ"], ["مرحبا بكم"])
    assert out["overall"]["wer"] == 0.0
    assert out["overall"]["cer"] == 0.0


def test_score_corpus_level_and_per_source():
    refs = ["a b c d", "x y"]
    hyps = ["a b c e", "z"]  # 1 substitution of 4; 1 sub + 1 deletion of 2
    out = score(refs, hyps, ["one", "two"])
    assert out["overall"]["word_errors"] == 3
    assert out["overall"]["ref_words"] == 6
    assert out["overall"]["wer"] == pytest.approx(0.5)
    assert out["per_source"]["one"]["wer"] == pytest.approx(0.25)
    assert out["per_source"]["two"]["wer"] == pytest.approx(1.0)
    assert out["per_source"]["two"]["count"] == 1


def test_score_empty_hypothesis_is_all_deletions():
    out = score(["كلمة واحدة"], [""])
    assert out["overall"]["wer"] == 1.0
    assert out["overall"]["cer"] == 1.0


def test_score_length_mismatch():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["a", "b"], ["a"])
