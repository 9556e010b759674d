"""First-stage retrieval over the catalogue: BM25 (stemmed, stop words) and dense vectors.

An index is a snapshot: requests read one, and a change makes a new one that shares the old one's
arrays. Resources added or changed after the BM25 matrix was built sit in a small delta scored
with the matrix's statistics (`with_changes`, milliseconds), until a background rebuild merges
them. Vectors fill in as they are embedded: a resource without one yet has no dense score.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import ChainMap, Counter

import numpy as np

from shared.ml.bm25 import BM25Matrix, RowTerms, TokenRows, Vocabulary, tokenize
from shared.store import Resource

__all__ = ["CatalogueIndex", "VectorTable", "tokenize"]


class VectorTable:
    """Resource vectors by index position, float16 (768 bytes a vector of 384), filled as they come.

    Shared by the snapshots of one index: positions only grow, and a snapshot reads only its own.
    """

    def __init__(self, dim: int, capacity: int = 0, model_id: str = "") -> None:
        """Room for `capacity` vectors and a few percent more, so that the first additions to the
        catalogue do not copy the table."""
        capacity += capacity // 20 + 64 if capacity else 0
        self.dim, self.model_id = dim, model_id
        """`model_id`: the embedder identity the vectors come from."""
        self.matrix = np.zeros((capacity, dim), dtype=np.float16)
        self.present = np.zeros(capacity, dtype=bool)
        self._lock = threading.Lock()

    @classmethod
    def full(cls, vectors: np.ndarray) -> VectorTable:
        table = cls(vectors.shape[1] if vectors.ndim == 2 else 1, len(vectors))
        if len(vectors):
            table.put(np.arange(len(vectors)), vectors)
        return table

    def reserve(self, size: int) -> None:
        with self._lock:
            if size <= len(self.present):
                return
            capacity = max(size, int(len(self.present) * 1.25) + 64)
            matrix = np.zeros((capacity, self.dim), dtype=np.float16)
            present = np.zeros(capacity, dtype=bool)
            matrix[:len(self.matrix)] = self.matrix
            present[:len(self.present)] = self.present
            self.matrix, self.present = matrix, present

    def put(self, positions: np.ndarray, vectors: np.ndarray) -> None:
        """Rows first, then their flags: a reader never takes a half-written row for a vector."""
        self.reserve(int(positions.max()) + 1 if positions.size else 0)
        matrix, present = self.matrix, self.present
        matrix[positions] = vectors
        present[positions] = True

    def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 rows and whether each is there (a missing one reads as zeros)."""
        present = self.present
        inside = positions < len(present)
        have = np.zeros(positions.shape, dtype=bool)
        have[inside] = present[positions[inside]]
        rows = np.zeros((positions.size, self.dim), dtype=np.float32)
        rows[have] = self.matrix[positions[have]]
        return rows, have

    def count(self, size: int) -> int:
        return int(self.present[:size].sum())

    def nbytes(self) -> int:
        return self.matrix.nbytes + self.present.nbytes


class CatalogueIndex:
    """Snapshot of the catalogue: resources by position, BM25, vectors where they are known."""

    def __init__(self, resources: list[Resource], embeddings: np.ndarray | None = None,
                 vectors: VectorTable | None = None) -> None:
        self.resources = list(resources)
        self.position: ChainMap[str, int] = ChainMap({}, {r.id: i for i, r in enumerate(self.resources)})
        """Resource id -> live position: the delta's entries over the base's (shared by snapshots)."""
        self.vocabulary = Vocabulary()
        self.rows = TokenRows.of([r.text for r in self.resources], self.vocabulary)
        # bm25s-style: texts that are all stop words ("the", "0") all score 0.
        self.matrix = BM25Matrix(self.rows, len(self.vocabulary.terms)) if self.rows.ids.size else None
        self.base_size = len(self.resources)
        self.delta = TokenRows(np.zeros(0, np.int32), np.zeros(1, np.int64))
        """Resources at positions from `base_size` on: added or changed since the matrix was built."""
        self.delta_terms = RowTerms.of(self.delta)
        self.live = np.ones(len(self.resources), dtype=bool)
        """False where a resource was since changed: its newer text sits in the delta."""
        self.vectors = VectorTable.full(embeddings) if embeddings is not None else vectors
        self.built_at = time.time()
        """When the BM25 matrix was built (a merge rebuilds it; a change does not)."""

    def __len__(self) -> int:
        return len(self.resources)

    @property
    def live_count(self) -> int:
        return int(self.live.sum())

    @property
    def has_vectors(self) -> bool:
        return self.vectors is not None

    def embedded(self) -> int:
        """Live resources with a vector."""
        if self.vectors is None:
            return 0
        present = self.vectors.present[:len(self)]
        return int((present & self.live[:present.size]).sum())

    def live_resources(self) -> list[Resource]:
        return [r for r, alive in zip(self.resources, self.live, strict=True) if alive]

    def with_changes(self, changed: list[Resource]) -> CatalogueIndex:
        """A new snapshot with these resources added or updated; unchanged ones are left out.
        The BM25 matrix, the vocabulary and the vector table are shared, not copied."""
        fresh = [r for r in changed
                 if r.id not in self.position or self.resources[self.position[r.id]] != r]
        if not fresh:
            return self
        new = copy.copy(self)
        new.resources = [*self.resources, *fresh]
        new.position = ChainMap(dict(self.position.maps[0]), self.position.maps[1])
        new.live = np.concatenate([self.live, np.ones(len(fresh), dtype=bool)])
        for offset, resource in enumerate(fresh):
            old = new.position.get(resource.id)
            if old is not None:
                new.live[old] = False
            new.position[resource.id] = len(self.resources) + offset
        added = TokenRows.of([r.text for r in fresh], self.vocabulary)
        offsets = np.concatenate([self.delta.offsets, self.delta.offsets[-1] + added.offsets[1:]])
        new.delta = TokenRows(np.concatenate([self.delta.ids, added.ids]), offsets)
        new.delta_terms = RowTerms.of(new.delta)
        if new.vectors is not None:
            new.vectors.reserve(len(new.resources))  # grows by a quarter at a time
        return new

    def delta_size(self) -> int:
        return len(self.resources) - self.base_size

    def bm25_all(self, query: str) -> np.ndarray:
        return self.bm25_terms(tokenize([query])[0])

    def bm25_terms(self, terms: list[str]) -> np.ndarray:
        """BM25 of every position for already-tokenized terms (e.g. expansion terms); 0 where a
        resource was replaced by a newer text."""
        ids = self.vocabulary.known(terms)
        out = np.zeros(len(self.resources), dtype=np.float32)
        if self.matrix is None or not ids.size:
            return out
        out[:self.base_size] = self.matrix.scores(ids)
        if self.delta_size():
            out[self.base_size:] = self.matrix.score_rows(self.delta, self.delta_terms, ids)
        out[~self.live] = 0.0
        return out

    def bm25_at(self, terms: list[str], positions: np.ndarray) -> np.ndarray:
        """`bm25_terms(terms)[positions]`, computed from these resources' own tokens: what
        pseudo-relevance feedback asks of its candidates without scoring the whole catalogue."""
        out = np.zeros(len(positions), dtype=np.float32)
        ids = self.vocabulary.known(terms)
        if self.matrix is None or not ids.size or not len(positions):
            return out
        out[:] = self.matrix.score_tokens([self.tokens_of(int(p)) for p in positions], ids)
        out[~self.live[np.asarray(positions, dtype=np.int64)]] = 0.0
        return out

    def tokens_of(self, position: int) -> np.ndarray:
        if position < self.base_size:
            return self.rows.row(position)
        return self.delta.row(position - self.base_size)

    def expansion_terms(self, positions: np.ndarray, query: str, count: int) -> list[str]:
        """The terms that make up most of the given resources, the query's own left out (RM1).

        Each resource counts equally, whatever its length: a term's weight is the sum of its
        share of each resource's tokens. Ties break alphabetically, so expansion is repeatable.
        """
        own = set(tokenize([query])[0])
        terms = self.vocabulary.terms
        weights: Counter[str] = Counter()
        for position in positions:
            tokens = self.tokens_of(int(position))
            for term_id, n in Counter(tokens.tolist()).items():
                term = terms[term_id]
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

    def vectors_of(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The resources' vectors (float32) and which of them exist yet."""
        if self.vectors is None:
            raise ValueError("this index has no embeddings")
        return self.vectors.rows(np.asarray(positions, dtype=np.int64))

    def dense(self, query_vector: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Cosine of each resource with the query; NaN where the resource has no vector yet."""
        rows, have = self.vectors_of(positions)
        scores = rows @ query_vector.astype(np.float32)
        scores[~have] = np.nan
        return scores

    def adopt_vectors(self, other: CatalogueIndex) -> CatalogueIndex:
        """This snapshot with a new vector table holding `other`'s vectors wherever the same
        resource has the same text: a rebuilt index, or one a new embedder filled, catches up
        with the catalogue of the moment without embedding again."""
        source = other.vectors
        if source is None:
            raise ValueError("the other index has no vectors")
        new = copy.copy(self)
        new.vectors = VectorTable(source.dim, len(self), source.model_id)
        present = source.present
        targets, origins = [], []
        for p in np.flatnonzero(self.live):
            resource = self.resources[p]
            q = other.position.get(resource.id)
            if (q is not None and q < present.size and present[q]
                    and other.resources[q].text == resource.text):
                targets.append(p)
                origins.append(q)
        for start in range(0, len(targets), 100_000):
            new.vectors.put(np.asarray(targets[start:start + 100_000]),
                            source.matrix[np.asarray(origins[start:start + 100_000])])
        return new

    def memory_bytes(self) -> dict[str, int]:
        """What the index keeps per part (the resources themselves aside)."""
        matrix = self.matrix.nbytes() if self.matrix is not None else 0
        return {"bm25": matrix, "tokens": self.rows.ids.nbytes + self.rows.offsets.nbytes
                + self.delta.ids.nbytes + self.delta.offsets.nbytes,
                "vectors": self.vectors.nbytes() if self.vectors is not None else 0}
