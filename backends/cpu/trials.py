"""Measured choice between ways of running one step that give the same result (a dot on the
BLAS or our kernel, split across threads or not; a fused kernel in one chunk or several):
which is faster depends on the shape, the host and its load, so a step's first calls time
each way in turn and the step keeps the one of smallest median time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


class Fastest:
    """The variants of one step and their timings; `chosen` is set once each has run
    TRIALS times."""

    TRIALS = 3

    def __init__(self, variants: Sequence[Any]) -> None:
        self.variants = list(variants)
        self.times: list[list[float]] = [[] for _ in self.variants]
        self.chosen: Any = self.variants[0] if len(self.variants) == 1 else None

    def run(self, runner: Callable[[Any], None]) -> None:
        """Runs the chosen variant, or (while trials last) the least-tried one, timed."""
        if self.chosen is not None:
            runner(self.chosen)
            return
        index = min(range(len(self.variants)), key=lambda i: len(self.times[i]))
        start = time.perf_counter()
        runner(self.variants[index])
        self.times[index].append(time.perf_counter() - start)
        if all(len(t) >= self.TRIALS for t in self.times):
            medians = [statistics.median(t) for t in self.times]
            self.chosen = self.variants[medians.index(min(medians))]
