"""The local launcher's per-process core shares (trainer/launch.py)."""

import pytest

from trainer.launch import core_shares


@pytest.mark.parametrize(
    ("n", "cores", "want"),
    [
        (2, [0, 1], [{0}, {1}]),
        (1, [0, 1], [{0, 1}]),
        (2, [3, 1, 2, 0], [{0, 1}, {2, 3}]),
        (3, [0, 1, 2, 3, 4, 5, 6], [{0, 1}, {2, 3}, {4, 5}]),
        (4, [0, 1], [{0}, {1}, {0}, {1}]),
    ],
)
def test_each_process_gets_its_own_share_of_the_cores(n, cores, want):
    shares = core_shares(n, cores)
    assert shares == want
    if n <= len(cores):  # disjoint when there are enough cores
        assert sum(len(s) for s in shares) == len(set().union(*shares))
