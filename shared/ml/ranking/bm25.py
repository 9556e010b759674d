"""BM25 over token ids kept in flat arrays: a catalogue of a million resources in a few hundred MB.

Texts are tokenized by bm25s a chunk at a time, each in its language (stemmed, stop words dropped:
shared/ml/ranking/analysis.py), and kept as one int32 array of term ids with offsets, never as
lists of Python strings (at 10^6 resources those alone
take gigabytes). The scores are bm25s's "lucene" variant, computed with numpy into a
term-by-document matrix; a resource added later (`score_rows`) is scored with the same
statistics, so it ranks among the others without rebuilding the matrix.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.ml.ranking.analysis import ENGLISH, Analyzer, analyzer

log = logging.getLogger(__name__)

K1, B = 1.5, 0.75
TOKENIZE_CHUNK = 20_000


@dataclass
class Vocabulary:
    """Term -> id, shared by every token array of an index and its later additions."""

    ids: dict[str, int] = field(default_factory=dict)
    terms: list[str] = field(default_factory=list)

    def add(self, term: str) -> int:
        found = self.ids.get(term)
        if found is None:
            found = self.ids[term] = len(self.terms)
            self.terms.append(term)
        return found

    def known(self, terms: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.ids[t] for t in terms if t in self.ids), dtype=np.int32)


@dataclass
class TokenRows:
    """Each text's term ids, in order: row i is `ids[offsets[i]:offsets[i + 1]]`."""

    ids: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def of(cls, texts: list[str], vocabulary: Vocabulary,
           languages: Sequence[str] | None = None) -> TokenRows:
        """Tokenized a chunk at a time, each text in its language (`languages`, English by default):
        peak memory is one chunk's Python lists, not the catalogue's."""
        parts, lengths = [], []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            end = min(start + TOKENIZE_CHUNK, len(texts))
            chunk = texts[start:end]
            spoken = sorted(set(languages[start:end])) if languages is not None else [ENGLISH]
            if len(spoken) == 1:
                flat, counts = _token_ids(chunk, analyzer(spoken[0]), vocabulary)
            else:
                assert languages is not None
                flat, counts = _mixed_token_ids(chunk, languages[start:end], vocabulary)
            parts.append(flat)
            lengths.append(counts)
            if len(texts) > TOKENIZE_CHUNK:  # what a long start is doing, in the log
                log.info("event=tokenized resources=%d of=%d", min(start + TOKENIZE_CHUNK, len(texts)),
                         len(texts))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        if texts:
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        return cls(np.concatenate(parts) if parts else np.zeros(0, np.int32), offsets)


def _token_ids(texts: list[str], analysis: Analyzer, vocabulary: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """The texts' term ids end to end, and each text's count of them."""
    chunk = analysis.tokenize(texts)
    assert not isinstance(chunk, list)
    local = sorted(chunk.vocab.items(), key=lambda kv: kv[1])
    to_global = np.array([vocabulary.add(term) for term, _ in local] or [0], dtype=np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(chunk.ids), dtype=np.int32)
    counts = np.fromiter((len(row) for row in chunk.ids), dtype=np.int64, count=len(chunk.ids))
    return (to_global[flat] if flat.size else flat), counts


def _mixed_token_ids(texts: list[str], languages: Sequence[str],
                     vocabulary: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """`_token_ids` of texts in several languages: each language's texts together, then put back in order."""
    rows: list[np.ndarray] = [np.zeros(0, np.int32)] * len(texts)
    for language in sorted(set(languages)):
        where = [i for i, spoken in enumerate(languages) if spoken == language]
        flat, counts = _token_ids([texts[i] for i in where], analyzer(language), vocabulary)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for n, i in enumerate(where):
            rows[i] = flat[bounds[n]:bounds[n + 1]]
    counts = np.fromiter((row.size for row in rows), dtype=np.int64, count=len(rows))
    return (np.concatenate(rows) if rows else np.zeros(0, np.int32)), counts


PAIR_CHUNK = 100_000


@dataclass
class RowTerms:
    """The distinct terms of each row with their counts, by row then term."""

    docs: np.ndarray
    terms: np.ndarray
    tf: np.ndarray

    @classmethod
    def of(cls, rows: TokenRows) -> RowTerms:
        return cls(*_pairs(rows))


def _pairs(rows: TokenRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, term, count) of every distinct term of every row, by row then term; a chunk of rows at a
    time, so the 64-bit keys never exist for the whole catalogue at once."""
    docs, terms, counts = [], [], []
    lengths = rows.lengths()
    for start in range(0, len(rows), PAIR_CHUNK):
        end = min(start + PAIR_CHUNK, len(rows))
        ids = rows.ids[rows.offsets[start]:rows.offsets[end]].astype(np.int64)
        row_of = np.repeat(np.arange(start, end, dtype=np.int64), lengths[start:end])
        unique, count = np.unique(row_of << 32 | ids, return_counts=True)
        docs.append((unique >> 32).astype(np.int32))
        terms.append((unique & 0xFFFFFFFF).astype(np.int32))
        counts.append(count.astype(np.float32))
    if not docs:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(docs), np.concatenate(terms), np.concatenate(counts)


class BM25Matrix:
    """BM25 scores by term then document (CSC), with the statistics that made them."""

    def __init__(self, rows: TokenRows, vocabulary_size: int) -> None:
        self.n_docs = len(rows)
        lengths = rows.lengths().astype(np.float32)
        self.avg_length = float(lengths.mean()) if self.n_docs and lengths.sum() else 1.0
        docs, terms, tf = _pairs(rows)
        self.df = np.bincount(terms, minlength=vocabulary_size).astype(np.int64)
        self.idf = self._idf(self.df)
        data = self.idf[terms] * self._tfc(tf, lengths[docs])
        order = np.argsort(terms, kind="stable")
        self.docs = docs[order]
        self.data = data[order].astype(np.float32)
        self.indptr = np.zeros(vocabulary_size + 1, dtype=np.int64)
        np.cumsum(self.df, out=self.indptr[1:])

    def _idf(self, df: np.ndarray) -> np.ndarray:
        n = max(self.n_docs, 1)
        return np.where(df > 0, np.log1p((n - df + 0.5) / (df + 0.5)), 0.0).astype(np.float32)

    def _tfc(self, tf: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return tf / (K1 * ((1 - B) + B * lengths / self.avg_length) + tf)

    def scores(self, terms: np.ndarray) -> np.ndarray:
        """Every indexed document's BM25 for the query's term ids (repeats count again, as in bm25s)."""
        terms = terms[terms < len(self.indptr) - 1]
        if not terms.size:
            return np.zeros(self.n_docs, dtype=np.float32)
        spans = [slice(self.indptr[t], self.indptr[t + 1]) for t in terms]
        docs = np.concatenate([self.docs[span] for span in spans])
        data = np.concatenate([self.data[span] for span in spans])
        return np.bincount(docs, weights=data, minlength=self.n_docs).astype(np.float32)

    def score_rows(self, rows: TokenRows, pairs: RowTerms, terms: np.ndarray) -> np.ndarray:
        """Rows indexed later (`pairs` are theirs), scored with this matrix's statistics; a term it
        never saw counts as seen once."""
        out = np.zeros(len(rows), dtype=np.float32)
        if not len(rows) or not terms.size:
            return out
        wanted = np.bincount(terms)
        hit = pairs.terms < wanted.size
        hit[hit] = wanted[pairs.terms[hit]] > 0
        if not hit.any():
            return out
        docs, hits, tf = pairs.docs[hit], pairs.terms[hit], pairs.tf[hit]
        df = np.where(hits < len(self.df), self.df[np.minimum(hits, len(self.df) - 1)], 0)
        lengths = rows.lengths().astype(np.float32)[docs]
        part = self._idf(np.maximum(df, 1)) * self._tfc(tf, lengths) * wanted[hits]
        np.add.at(out, docs, part.astype(np.float32))
        return out

    def score_tokens(self, rows: list[np.ndarray], terms: np.ndarray) -> np.ndarray:
        """BM25 of a few documents given their token ids (indexed or added later alike), the same
        as `scores` at their positions: a candidate's score costs its length, not the postings'."""
        out = np.zeros(len(rows), dtype=np.float32)
        terms = terms[terms >= 0]
        if not terms.size:
            return out
        wanted = np.bincount(terms)
        present = np.flatnonzero(wanted)
        df = np.where(present < len(self.df), self.df[np.minimum(present, len(self.df) - 1)], 0)
        idf = self._idf(np.maximum(df, 1)) * wanted[present]
        for i, row in enumerate(rows):
            if row.size:
                tf = np.bincount(row, minlength=wanted.size)[present].astype(np.float32)
                out[i] = float((idf * self._tfc(tf, np.float32(row.size))).sum())
        return out

    def nbytes(self) -> int:
        return self.docs.nbytes + self.data.nbytes + self.indptr.nbytes + self.df.nbytes + self.idf.nbytes
