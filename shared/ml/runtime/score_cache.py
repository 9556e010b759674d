"""Cross-encoder scores kept per (query, resource text) for one loaded version.

Search traffic is dominated by repeated queries (a Zipf head), and a cross-encoder's score of a
pair depends only on the weights and the two texts. One cache belongs to one loaded model on one
runtime, so a new version, a challenger or another backend starts empty and can never be served
another's score; the key holds the resource's text itself (shared with the index, not copied), so
an edited resource misses instead of reusing its old score.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from shared import metrics


class ScoreCache:
    """A bounded LRU of raw cross-encoder logits; `entries=0` keeps nothing."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._scores: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def scores(self, query: str, texts: list[str],
               compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """The scores of `query` against `texts`; `compute` runs once, on the texts not cached."""
        if self.entries <= 0:
            self._count(0, len(texts))
            return compute(texts)
        out = np.empty(len(texts), dtype=np.float32)
        missing: list[int] = []
        with self._lock:
            for i, text in enumerate(texts):
                score = self._scores.get((query, text))
                if score is None:
                    missing.append(i)
                else:
                    self._scores.move_to_end((query, text))
                    out[i] = score
        self._count(len(texts) - len(missing), len(missing))
        if missing:
            fresh = compute([texts[i] for i in missing])
            out[missing] = fresh
            with self._lock:
                for i, score in zip(missing, fresh.tolist(), strict=True):
                    self._scores[(query, texts[i])] = score
                while len(self._scores) > self.entries:
                    self._scores.popitem(last=False)
                metrics.CROSS_CACHE_ENTRIES.set(len(self._scores))
        return out

    def _count(self, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses
        if hits:
            metrics.CROSS_CACHE_LOOKUPS.labels("hit").inc(hits)
        if misses:
            metrics.CROSS_CACHE_LOOKUPS.labels("miss").inc(misses)

    def __len__(self) -> int:
        return len(self._scores)

    def info(self) -> dict[str, float | int]:
        looked = self.hits + self.misses
        return {"entries": len(self._scores), "max_entries": self.entries, "hits": self.hits,
                "misses": self.misses, "hit_rate": round(self.hits / looked, 4) if looked else 0.0}
