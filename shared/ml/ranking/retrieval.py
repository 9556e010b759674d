"""First-stage retrieval over the catalogue: BM25 (stemmed, stop words, per language) and dense vectors.

An index is a snapshot: requests read one, and a change makes a new one that shares the old one's
arrays. Resources added or changed after the BM25 matrix was built sit in a small delta scored
with the matrix's statistics (`with_changes`, milliseconds), until a background rebuild merges
them; a withdrawn one is masked (`without`). Vectors fill in as they are embedded: a resource
without one yet has no dense score. A search's first stage (`match`) scores the whole catalogue,
applies its filters, then picks the candidates (shared/ml/ranking/fields.py).
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from shared.ml.ranking.analysis import analyzer, language_code
from shared.ml.ranking.bm25 import BM25Matrix, RowTerms, TokenRows, Vocabulary
from shared.ml.ranking.fields import (
    DEFAULT_SCHEMA,
    LANGUAGE,
    CatalogueSchema,
    FieldColumn,
    Match,
    top_positive,
)
from shared.records import Resource

__all__ = ["CatalogueIndex", "VectorTable"]


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


class Positions(Mapping[str, int]):
    """Resource id -> live position: the changes since BM25 was built over the build's own map (shared
    by snapshots); a resource removed since maps to -1 among the changes."""

    def __init__(self, base: dict[str, int], changes: dict[str, int] | None = None) -> None:
        self.base, self.changes = base, changes or {}

    def __getitem__(self, resource_id: str) -> int:
        found = self.changes.get(resource_id)
        if found is None:
            return self.base[resource_id]
        if found < 0:
            raise KeyError(resource_id)
        return found

    def __iter__(self) -> Iterator[str]:
        yield from (r for r in self.base if r not in self.changes)
        yield from (r for r, p in self.changes.items() if p >= 0)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def changed(self, updates: dict[str, int]) -> Positions:
        """These positions with `updates` over them (a new snapshot's; this one is unchanged)."""
        return Positions(self.base, {**self.changes, **updates})


class CatalogueIndex:
    """Snapshot of the catalogue: resources by position, BM25, vectors where they are known, and the
    columns of the fields a search narrows by (`schema`)."""

    def __init__(self, resources: list[Resource], embeddings: np.ndarray | None = None,
                 vectors: VectorTable | None = None, schema: CatalogueSchema = DEFAULT_SCHEMA) -> None:
        self.resources = list(resources)
        self.schema = schema
        self.position = Positions({r.id: i for i, r in enumerate(self.resources)})
        """Resource id -> live position."""
        self.columns = {name: FieldColumn.of(schema.value(r, name) for r in self.resources)
                        for name in schema.columns}
        """The filterable fields' values and the language, by position."""
        self.vocabulary = Vocabulary()
        self.rows = TokenRows.of([r.text for r in self.resources], self.vocabulary, self._languages_of(0))
        # bm25s-style: texts that are all stop words ("the", "0") all score 0.
        self.matrix = BM25Matrix(self.rows, len(self.vocabulary.terms)) if self.rows.ids.size else None
        self.base_size = len(self.resources)
        self.delta = TokenRows(np.zeros(0, np.int32), np.zeros(1, np.int64))
        """Resources at positions from `base_size` on: added or changed since the matrix was built."""
        self.delta_terms = RowTerms.of(self.delta)
        self.live = np.ones(len(self.resources), dtype=bool)
        """False where a resource was since changed (its newer text sits in the delta) or withdrawn."""
        self.languages = self._spoken()
        """The languages of the live resources, the catalogue's own first where it has none."""
        self.vectors = VectorTable.full(embeddings) if embeddings is not None else vectors
        self.built_at = time.time()
        """When the BM25 matrix was built (a merge rebuilds it; a change does not)."""

    def __len__(self) -> int:
        return len(self.resources)

    def _languages_of(self, start: int) -> list[str]:
        column = self.columns[LANGUAGE]
        return [column.known.values[c] for c in column.codes[start:].tolist()]

    def _spoken(self) -> tuple[str, ...]:
        column = self.columns[LANGUAGE]
        found = np.bincount(column.codes[self.live], minlength=len(column.known.values))
        spoken = tuple(sorted(column.known.values[c] for c in np.flatnonzero(found) if c))
        return spoken or (self.schema.language,)

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
        new.live = np.concatenate([self.live, np.ones(len(fresh), dtype=bool)])
        moved: dict[str, int] = {}
        for offset, resource in enumerate(fresh):
            old = moved.get(resource.id, self.position.get(resource.id))
            if old is not None:
                new.live[old] = False
            moved[resource.id] = len(self.resources) + offset
        new.position = self.position.changed(moved)
        new.columns = {name: column.extended(self.schema.value(r, name) for r in fresh)
                       for name, column in self.columns.items()}
        added = TokenRows.of([r.text for r in fresh], self.vocabulary, new._languages_of(len(self.resources)))
        offsets = np.concatenate([self.delta.offsets, self.delta.offsets[-1] + added.offsets[1:]])
        new.delta = TokenRows(np.concatenate([self.delta.ids, added.ids]), offsets)
        new.delta_terms = RowTerms.of(new.delta)
        new.languages = new._spoken()
        if new.vectors is not None:
            new.vectors.reserve(len(new.resources))  # grows by a quarter at a time
        return new

    def without(self, resource_ids: Iterable[str]) -> CatalogueIndex:
        """A new snapshot without these resources (removed or hidden): never matched again; their
        rows leave memory at the next rebuild. Ids it does not serve are ignored."""
        gone = {r: self.position[r] for r in dict.fromkeys(resource_ids) if r in self.position}
        if not gone:
            return self
        new = copy.copy(self)
        new.live = self.live.copy()
        new.live[list(gone.values())] = False
        new.position = self.position.changed(dict.fromkeys(gone, -1))
        new.languages = new._spoken()
        return new

    def stale(self) -> int:
        """Rows a rebuild would drop or merge: the delta, and the rows no longer served."""
        return max(self.delta_size(), len(self) - self.live_count)

    def delta_size(self) -> int:
        return len(self.resources) - self.base_size

    def analysed_in(self, language: str | None = None) -> tuple[str, ...]:
        """The languages a query is analysed in: the one a search names, else the catalogue's."""
        return (language_code(language),) if language else self.languages

    def query_terms(self, query: str, language: str | None = None) -> set[str]:
        """The query's terms in every language it is analysed in."""
        return {t for spoken in self.analysed_in(language) for t in analyzer(spoken).terms(query)}

    def bm25_all(self, query: str, language: str | None = None) -> np.ndarray:
        """Every position's BM25 for the query: analysed in `language` for every resource, else in
        each resource's own language."""
        languages = self.analysed_in(language)
        if len(languages) == 1:
            return self.bm25_terms(analyzer(languages[0]).terms(query))
        column = self.columns[LANGUAGE]
        out = np.zeros(len(self.resources), dtype=np.float32)
        for spoken in languages:
            where = column.codes == column.known.codes[spoken]
            out[where] = self.bm25_terms(analyzer(spoken).terms(query))[where]
        return out

    def bm25_terms(self, terms: list[str]) -> np.ndarray:
        """BM25 of every position for already-analysed terms (e.g. expansion terms); 0 where a
        resource was replaced by a newer text or withdrawn."""
        ids = self.vocabulary.known(terms)
        out = np.zeros(len(self.resources), dtype=np.float32)
        if self.matrix is None or not ids.size:
            return out
        out[:self.base_size] = self.matrix.scores(ids)
        if self.delta_size():
            out[self.base_size:] = self.matrix.score_rows(self.delta, self.delta_terms, ids)
        out[~self.live] = 0.0
        return out

    def query_bm25_at(self, query: str, positions: np.ndarray, language: str | None = None) -> np.ndarray:
        """`bm25_all(query, language)[positions]`, from these resources' own tokens."""
        positions = np.asarray(positions, dtype=np.int64)
        languages = self.analysed_in(language)
        if len(languages) == 1:
            return self.bm25_at(analyzer(languages[0]).terms(query), positions)
        column = self.columns[LANGUAGE]
        out = np.zeros(len(positions), dtype=np.float32)
        for spoken in languages:
            where = column.codes[positions] == column.known.codes[spoken]
            out[where] = self.bm25_at(analyzer(spoken).terms(query), positions[where])
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

    def expansion_terms(self, positions: np.ndarray, query: str, count: int,
                        language: str | None = None) -> list[str]:
        """The terms that make up most of the given resources, the query's own left out (RM1).

        Each resource counts equally, whatever its length: a term's weight is the sum of its
        share of each resource's tokens. Ties break alphabetically, so expansion is repeatable.
        """
        own = self.query_terms(query, language)
        terms = self.vocabulary.terms
        weights: Counter[str] = Counter()
        for position in positions:
            tokens = self.tokens_of(int(position))
            for term_id, n in Counter(tokens.tolist()).items():
                term = terms[term_id]
                if term not in own:
                    weights[term] += n / len(tokens)
        return [term for term, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:count]]

    def match(self, query: str, filters: Mapping[str, Sequence[str]] | None = None,
              language: str | None = None) -> Match:
        """The query's first stage over the whole catalogue, narrowed by `filters` (field -> values:
        values OR, fields AND; fields must be columns of this index)."""
        return Match(self.bm25_all(query, language), filters or {}, self.columns)

    def bm25_top(self, query: str, k: int, language: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Positions and scores of the k best documents with a positive BM25 score, ties by position."""
        return top_positive(self.bm25_all(query, language), k)

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
                "vectors": self.vectors.nbytes() if self.vectors is not None else 0,
                "fields": sum(column.codes.nbytes for column in self.columns.values())}
