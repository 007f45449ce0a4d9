"""The long-audio bench's count of errors at cut points (bench/longform.py): only errors on words near a cut."""

from __future__ import annotations

from bench.longform import errors_near_cuts

REF = "a b c d e"
TIMES = [1.0, 2.0, 3.0, 4.0, 5.0]  # seconds, one per word


def test_only_errors_on_words_near_a_cut_count():
    assert errors_near_cuts(REF, REF, TIMES, [2.0], near_s=0.5) == 0
    assert errors_near_cuts(REF, "a x c d e", TIMES, [2.0], near_s=0.5) == 1  # substituted at the cut
    assert errors_near_cuts(REF, "a b c x e", TIMES, [2.0], near_s=0.5) == 0  # far from it
    assert errors_near_cuts(REF, "a c d e", TIMES, [2.0], near_s=0.5) == 1  # deleted at the cut
    assert errors_near_cuts(REF, "a b y y c d e", TIMES, [3.0], near_s=0.5) == 2  # inserted before "c"
    assert errors_near_cuts(REF, "x x c d e", TIMES, [1.0, 2.0], near_s=0.1) == 2


def test_no_cuts_no_errors_at_cuts():
    assert errors_near_cuts(REF, "", TIMES, [], near_s=1.0) == 0
    assert errors_near_cuts(REF, "", TIMES, [3.0], near_s=1.0) == 3  # empty hypothesis: b, c, d deleted
