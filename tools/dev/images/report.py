"""Step results and the summary table that ends every `python -m tools.dev.images` run."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

PASS = "PASS"
FAIL = "FAIL"
NOT_RUN = "NOT RUN"


class StepFailed(Exception):
    """A step failed; the message says what and where to look."""


class StepNotRunnable(Exception):
    """A step cannot run yet (a piece it needs is missing); the message says which piece."""


@dataclasses.dataclass
class StepResult:
    name: str
    status: str
    detail: str
    seconds: float


def say(message: str) -> None:
    """Prints a progress line at once (CI logs are read live)."""
    print(message, flush=True)


def banner(message: str) -> None:
    """Prints a message that must not be missed in a long CI log."""
    line = "!" * 100
    print(f"\n{line}\n!!! {message}\n{line}\n", file=sys.stderr, flush=True)


class Report:
    """Collects the outcome of each step; a step never passes silently."""

    def __init__(self) -> None:
        self.results: list[StepResult] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Runs the body as step `name`: records PASS, FAIL (StepFailed) or NOT RUN (StepNotRunnable)."""
        say(f"==> {name}")
        start = time.monotonic()
        try:
            yield
        except StepNotRunnable as err:
            self._add(name, NOT_RUN, str(err), start)
            banner(f"{name}: NOT RUN: {err}")
        except StepFailed as err:
            self._add(name, FAIL, str(err), start)
            banner(f"{name}: FAILED: {err}")
        else:
            self._add(name, PASS, "", start)
            say(f"<== {name}: PASS ({time.monotonic() - start:.0f} s)")

    def _add(self, name: str, status: str, detail: str, start: float) -> None:
        self.results.append(StepResult(name, status, detail, time.monotonic() - start))

    def not_run(self, name: str, reason: str) -> None:
        """Records a step that was not attempted, e.g. because a step it needs failed."""
        self.results.append(StepResult(name, NOT_RUN, reason, 0.0))
        banner(f"{name}: NOT RUN: {reason}")

    def passed(self, name: str) -> bool:
        return any(r.name == name and r.status == PASS for r in self.results)

    def exit_code(self) -> int:
        """0 only when every step passed: a step that did not run fails CI as loudly as one that failed."""
        return 0 if self.results and all(r.status == PASS for r in self.results) else 1

    def print_summary(self) -> None:
        width = max((len(r.name) for r in self.results), default=4)
        print("\n" + "=" * 100)
        print("images summary")
        for r in self.results:
            # The first line only: the full message (with its log tail) is in the banner above.
            first = r.detail.splitlines()[0] if r.detail else ""
            detail = f"  {first[:160]}{'...' if len(first) > 160 else ''}" if first else ""
            print(f"  {r.name:<{width}}  {r.status:<7}  {r.seconds:6.0f} s{detail}")
        total = sum(r.seconds for r in self.results)
        verdict = "all steps passed" if self.exit_code() == 0 else "NOT ALL STEPS PASSED"
        print(f"  total {total:.0f} s: {verdict}")
        print("=" * 100, flush=True)
