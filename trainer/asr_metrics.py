"""ASR scoring: the Arabic text normaliser and WER/CER, overall and per source.

The normaliser follows the Open Universal Arabic ASR Leaderboard's rules so that our numbers compare with
theirs:
- punctuation is removed (ASCII and Arabic: ، ؛ ؟ and every Unicode punctuation or symbol character);
- diacritics (harakat, tanwin, shadda, sukun: U+064B..U+0652) and the tatweel U+0640 are removed;
- hamza-carrying alefs آ أ إ become ا, ؤ becomes و, ئ becomes ي, and a bare hamza ء is removed;
- Eastern Arabic (U+0660..U+0669) and Persian (U+06F0..U+06F9) digits become 0..9;
- ة and ى are kept as they are (the leaderboard does not fold them: they change meaning);
- Latin letters are lower-cased and runs of white space collapse to one space.

The trainer's evaluation and the server's batch inference both score through `score`, so one place
decides what counts as an error.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Sequence

import jiwer

_DIACRITICS = {chr(c) for c in range(0x064B, 0x0653)} | {"\u0640"}  # harakat .. sukun, tatweel
_LETTER_MAP = {"آ": "ا", "أ": "ا", "إ": "ا", "ؤ": "و", "ئ": "ي", "ء": ""}
_DIGITS = {chr(0x0660 + i): str(i) for i in range(10)} | {chr(0x06F0 + i): str(i) for i in range(10)}
_ARABIC_PUNCT = {"،", "؛", "؟", "٪", "٫", "٬", "۔", "«", "»"}


def _map_char(ch: str) -> str:
    if ch in _DIACRITICS:
        return ""
    if ch in _LETTER_MAP:
        return _LETTER_MAP[ch]
    if ch in _DIGITS:
        return _DIGITS[ch]
    if ch in _ARABIC_PUNCT:
        return " "
    category = unicodedata.category(ch)
    # Punctuation (P*) and symbols (S*) split words, as a space would; marks outside the Arabic
    # diacritics (e.g. combining accents) are kept, since they belong to their letters.
    if category[0] in ("P", "S"):
        return " "
    return ch


def normalize_arabic(text: str) -> str:
    """Normalises Arabic (or mixed) text for scoring, per the module docstring's rules.

    Args:
        text: a reference or hypothesis transcript.

    Returns:
        The normalised text: words separated by single spaces, no leading or trailing space.
    """
    text = unicodedata.normalize("NFC", text)
    mapped = "".join(_map_char(ch) for ch in text).lower()
    return " ".join(mapped.split())


def _counts(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    words = jiwer.process_words(list(refs), list(hyps))
    w_err = words.substitutions + words.deletions + words.insertions
    w_ref = words.substitutions + words.deletions + words.hits
    chars = jiwer.process_characters(list(refs), list(hyps))
    c_err = chars.substitutions + chars.deletions + chars.insertions
    c_ref = chars.substitutions + chars.deletions + chars.hits
    return {
        "wer": w_err / w_ref if w_ref else float(w_err > 0),
        "cer": c_err / c_ref if c_ref else float(c_err > 0),
        "word_errors": int(w_err),
        "ref_words": int(w_ref),
        "char_errors": int(c_err),
        "ref_chars": int(c_ref),
        "count": len(refs),
    }


def score(
    refs: Sequence[str], hyps: Sequence[str], sources: Sequence[str] | None = None
) -> dict[str, object]:
    """Word and character error rates after `normalize_arabic`, overall and per source.

    Rates are corpus-level (total errors over total reference words or characters), as the leaderboard
    reports them, not the mean of per-utterance rates.

    Args:
        refs: reference transcripts.
        hyps: hypotheses, one per reference.
        sources: the dataset name of each pair (e.g. `dataset_name` from the batch metadata); None
            puts every pair under "all".

    Returns:
        ``{"overall": {...}, "per_source": {name: {...}}}`` where each entry holds ``wer``, ``cer``
        (fractions), ``word_errors``, ``ref_words``, ``char_errors``, ``ref_chars`` and ``count``.

    Raises:
        ValueError: if the three sequences differ in length.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if sources is None:
        sources = ["all"] * len(refs)
    if len(sources) != len(refs):
        raise ValueError(f"{len(refs)} references but {len(sources)} sources")
    norm_refs = [normalize_arabic(r) for r in refs]
    norm_hyps = [normalize_arabic(h) for h in hyps]
    if not norm_refs:
        empty = {"wer": 0.0, "cer": 0.0, "word_errors": 0, "ref_words": 0}
        return {"overall": {**empty, "char_errors": 0, "ref_chars": 0, "count": 0}, "per_source": {}}
    grouped: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for ref, hyp, src in zip(norm_refs, norm_hyps, sources, strict=True):
        grouped[str(src)][0].append(ref)
        grouped[str(src)][1].append(hyp)
    return {
        "overall": _counts(norm_refs, norm_hyps),
        "per_source": {src: _counts(r, h) for src, (r, h) in sorted(grouped.items())},
    }
