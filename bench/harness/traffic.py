"""Queries as real traffic asks them: some far more often than others, and new ones keep coming.

What the simulated people (`tools.people`) search, in `make online` and the offline studies.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Stream:
    """A stream of `length` searches: Zipf popularity, and new queries keep arriving.

    At the start a fifth of the queries exist; the rest arrive in a random order, evenly over the
    stream. Each query's popularity is 1/rank^s for a random rank among all of them."""

    queries: Sequence[str]
    length: int
    rng: random.Random
    s: float = 1.0
    start_share: float = 0.2

    def __post_init__(self) -> None:
        self.order = list(self.queries)
        self.rng.shuffle(self.order)
        ranks = list(range(1, len(self.order) + 1))
        self.rng.shuffle(ranks)
        self.weight = {q: 1.0 / r**self.s for q, r in zip(self.order, ranks, strict=True)}

    def at(self, step: int) -> str:
        """The query searched at `step`."""
        available = self.order[: max(1, round(len(self.order) * (
            self.start_share + (1 - self.start_share) * step / max(1, self.length - 1))))]
        return self.rng.choices(available, weights=[self.weight[q] for q in available])[0]
