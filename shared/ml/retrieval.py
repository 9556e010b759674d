"""First-stage retrieval over the catalogue: BM25 (bm25s, stemmed, stop words) and dense vectors."""

from __future__ import annotations

from collections import Counter

import bm25s
import numpy as np
import Stemmer

from shared.store import Resource

_STEMMER = Stemmer.Stemmer("english")


def tokenize(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", stemmer=_STEMMER, return_ids=False,
                          show_progress=False)


class CatalogueIndex:
    """Immutable snapshot of the catalogue; a new snapshot is built and swapped on change."""

    def __init__(self, resources: list[Resource], embeddings: np.ndarray | None = None) -> None:
        self.resources = resources
        self.position = {r.id: i for i, r in enumerate(resources)}
        self.embeddings = embeddings
        self.bm25: bm25s.BM25 | None = None
        tokens = tokenize([r.text for r in resources]) if resources else []
        self.tokens: list[list[str]] = tokens
        if any(tokens):  # bm25s cannot index texts that are all stop words ("the", "0"): all score 0
            self.bm25 = bm25s.BM25()
            self.bm25.index(tokens, show_progress=False)

    def __len__(self) -> int:
        return len(self.resources)

    def bm25_all(self, query: str) -> np.ndarray:
        return self.bm25_terms(tokenize([query])[0])

    def bm25_terms(self, terms: list[str]) -> np.ndarray:
        """BM25 of every resource for already-tokenized terms (e.g. expansion terms)."""
        if self.bm25 is None or not terms:
            return np.zeros(len(self.resources), dtype=np.float32)
        return np.asarray(self.bm25.get_scores(terms), dtype=np.float32)

    def expansion_terms(self, positions: np.ndarray, query: str, count: int) -> list[str]:
        """The terms that make up most of the given resources, the query's own left out (RM1).

        Each resource counts equally, whatever its length: a term's weight is the sum of its
        share of each resource's tokens. Ties break alphabetically, so expansion is repeatable.
        """
        own = set(tokenize([query])[0])
        weights: Counter[str] = Counter()
        for position in positions:
            tokens = self.tokens[int(position)]
            for term, n in Counter(tokens).items():
                if term not in own:
                    weights[term] += n / len(tokens)
        return [term for term, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:count]]

    def bm25_top(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and scores of the k best documents with a positive BM25 score."""
        scores = self.bm25_all(query)
        if scores.size == 0:
            return np.zeros(0, dtype=np.int64), scores
        k = min(k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[scores[top] > 0]
        return top, scores[top]

    def dense(self, query_vector: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.embeddings is None:
            raise ValueError("this index has no embeddings")
        return self.embeddings[positions] @ query_vector
