"""Composes the closed-vocabulary genres of the demo corpus (the part of ar_sentences.txt after its marker).

Why composed sentences: the hand-written genres use ~1,450 distinct words, most of them once, so a held-out
sentence is mostly words never heard in training; no model trained from scratch on a few hundred clips can
spell those. Speech corpora for small systems solve this the classic way (TIDIGITS, DARPA Resource
Management): sentences from a small grammar over a closed vocabulary, with the *sentences* of the test set
never heard in training but every word heard many times. The three genres below do that for everyday MSA:
errands, weather forecasts and timetables, ~150 words in all.

Run ``python -m tools.data.corpus.compose`` to rewrite the composed part of ar_sentences.txt (the hand-written
part above the marker is kept as is); tests/data/test_synth.py checks that the file matches this script.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

SENTENCES_FILE = Path(__file__).parent / "ar_sentences.txt"
MARKER = "# ---- composed by tools/data/corpus/compose.py below this line; do not edit by hand ----"
SENTENCES_PER_GENRE = 250
SEED = 2026

# errands: "{verb} {object} {place} {time}." e.g. "I bought the book at the market yesterday."
_ERRAND_VERBS = ("اشتريت", "وجدت", "نسيت", "تركت", "وضعت", "رأيت", "أصلحت", "نظفت", "حملت", "طلبت")
_ERRAND_OBJECTS = (
    "الكتاب",
    "القلم",
    "المفتاح",
    "الحقيبة",
    "الهاتف",
    "القميص",
    "المصباح",
    "الدفتر",
    "المظلة",
    "الكرسي",
    "الصندوق",
    "الحاسوب",
)
_ERRAND_PLACES = (
    "في البيت",
    "في المكتب",
    "في السوق",
    "في المطبخ",
    "في السيارة",
    "في المدرسة",
    "في الحديقة",
    "في الغرفة",
    "قرب الباب",
)
_ERRAND_TIMES = (
    "أمس",
    "اليوم",
    "صباحا",
    "مساء",
    "يوم السبت",
    "يوم الأحد",
    "يوم الاثنين",
    "يوم الثلاثاء",
    "يوم الأربعاء",
    "يوم الخميس",
    "بعد الظهر",
    "في الليل",
)

# weather: "{when} the weather will be {adjective} in {city}{extra}."
_WEATHER_WHEN = ("غدا", "بعد غد", "مساء اليوم", "صباح الغد", "يوم الجمعة", "في نهاية الأسبوع")
_WEATHER_ADJECTIVES = ("باردا", "حارا", "معتدلا", "ممطرا", "غائما", "مشمسا", "جميلا", "رطبا", "عاصفا")
_CITIES = (
    "القاهرة",
    "بغداد",
    "دمشق",
    "الرياض",
    "تونس",
    "الرباط",
    "عمان",
    "بيروت",
    "الدوحة",
    "الخرطوم",
    "الجزائر",
    "مسقط",
)
_WEATHER_EXTRA = ("", " مع رياح خفيفة", " مع أمطار غزيرة", " مع بعض السحب")

# timetable: "{vehicle does} to/from {city} at {hour} o'clock {part of day}."
_DEPARTURES = ("ينطلق القطار إلى", "تنطلق الحافلة إلى", "تقلع الطائرة إلى", "تبحر السفينة إلى")
_ARRIVALS = ("يصل القطار من", "تصل الحافلة من", "تصل الطائرة من", "تصل السفينة من")
_HOURS = (
    "الواحدة",
    "الثانية",
    "الثالثة",
    "الرابعة",
    "الخامسة",
    "السادسة",
    "السابعة",
    "الثامنة",
    "التاسعة",
    "العاشرة",
    "الحادية عشرة",
    "الثانية عشرة",
)
_DAY_PARTS = ("صباحا", "مساء", "ظهرا", "ليلا")


def _errands() -> list[str]:
    return [
        f"{v} {o} {p} {t}."
        for v, o, p, t in itertools.product(_ERRAND_VERBS, _ERRAND_OBJECTS, _ERRAND_PLACES, _ERRAND_TIMES)
    ]


def _weather() -> list[str]:
    return [
        f"{w} سيكون الجو {a} في {c}{x}."
        for w, a, c, x in itertools.product(_WEATHER_WHEN, _WEATHER_ADJECTIVES, _CITIES, _WEATHER_EXTRA)
    ]


def _timetable() -> list[str]:
    return [
        f"{v} {c} الساعة {h} {d}."
        for v, c, h, d in itertools.product(_DEPARTURES + _ARRIVALS, _CITIES, _HOURS, _DAY_PARTS)
    ]


GENRES = {"errands": _errands, "weather": _weather, "timetable": _timetable}


def composed_section(per_genre: int = SENTENCES_PER_GENRE, seed: int = SEED) -> str:
    """The text after the marker: for each genre a header and ``per_genre`` distinct sentences."""
    rng = np.random.default_rng(seed)
    lines = []
    for genre, make in GENRES.items():
        every = make()
        chosen = sorted(rng.choice(len(every), size=per_genre, replace=False))
        lines.append(f"# genre: {genre}")
        lines += [every[i] for i in chosen]
    return "\n".join(lines) + "\n"


def render(current: str) -> str:
    """``current`` (the sentences file) with everything after the marker replaced by `composed_section`."""
    handwritten = current.split(MARKER, 1)[0].rstrip("\n")
    return f"{handwritten}\n\n{MARKER}\n{composed_section()}"


def main() -> int:
    SENTENCES_FILE.write_text(render(SENTENCES_FILE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {SENTENCES_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
