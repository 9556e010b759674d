"""The served model is a versioned pipeline: scorers, their model folders, and fusion weights.

Version 0 fuses BM25 with dense scores from the base embedding model, each also run again
with pseudo-relevance feedback (the query expanded by its own best first-pass results).
Trained versions add what feedback taught (a memory of rated queries, a cross-encoder
fine-tuned on feedback); the fusion weights say how much each counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, field_validator
from sentence_transformers import CrossEncoder, SentenceTransformer

from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.registry import Registry
from shared.ml.runtime.embedder import Encoder
from shared.ml.runtime.loading import (
    cross_scores,
    embed,
    embedder_identity,
    load_cross_encoder,
    load_embedder,
)
from shared.ml.runtime.pair_tokens import PairTokens
from shared.ml.runtime.score_cache import ScoreCache
from shared.records import normalise_query, utcnow
from shared.settings import Settings

SPEC_FILE = "pipeline.json"
VERSION_ZERO = "v0"
"""Version 0's name: served when nothing is promoted; it has no registry folder."""
SCORERS = ("bm25", "dense", "bm25_prf", "dense_prf", "cross", "memory", "neighbours")
PRF_SCORERS = ("bm25_prf", "dense_prf")
MEMORY_SCORERS = ("memory", "neighbours")
"""The feedback memory's two scorers: the query's own ratings, and its nearest rated queries'."""
# Sparse scorers are added as they are: z-scoring a mostly-zero vector would inflate its few hits.
RAW_SCORERS = MEMORY_SCORERS
MEMORY_VECTORS = "feedback_memory.npy"
MEMORY_LABELS = "feedback_memory.json"


class PipelineSpec(BaseModel):
    version: str = "v0"
    base_model: str
    embedding_model: str | None = None
    cross_encoder: str | None = Field(
        default=None, description="Cross-encoder folder relative to the version folder."
    )
    weights: dict[str, float] = Field(default_factory=lambda: {"bm25": 1.0, "dense": 1.0})
    max_length: int = 128
    prf_docs: int = Field(default=5, ge=0, description="First-pass results the query is expanded with.")
    prf_beta: float = Field(default=0.5, ge=0, description="Their mean embedding's share of the dense query.")
    prf_terms: int = Field(default=10, ge=0, description="Expansion terms added to the BM25 query.")
    metrics: dict[str, float] = Field(default_factory=dict)
    trained_at: datetime | None = None

    @field_validator("weights")
    @classmethod
    def _neighbours_of_older_versions(cls, weights: dict[str, float]) -> dict[str, float]:
        """Versions written before the memory had two scorers weighted its neighbours' votes
        like the query's own: read that way, they rank as they always did."""
        if weights.get("memory") and "neighbours" not in weights:
            return {**weights, "neighbours": weights["memory"]}
        return weights

    @property
    def kind(self) -> str:
        return "+".join(s for s in SCORERS if self.weights.get(s))

    def save(self, folder: Path) -> None:
        (folder / SPEC_FILE).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, folder: Path) -> PipelineSpec:
        return cls.model_validate(json.loads((folder / SPEC_FILE).read_text()))


def zscore(values: np.ndarray) -> np.ndarray:
    """Per-query normalisation so scorers on different scales can be added; NaN (a score this
    candidate does not have, e.g. no vector yet) stays NaN and is left out of the statistics."""
    if values.size == 0:
        return values
    present = ~np.isnan(values)
    if not present.any():
        return values
    known = values[present]
    std = float(known.std())
    if std <= 1e-9:
        return np.where(present, 0.0, np.nan).astype(values.dtype)
    return (values - known.mean()) / std


def fuse(scores: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """The weighted sum of the scorers' z-scores (raw for sparse ones).

    A candidate missing a scorer's score (NaN) gets its other normalised scorers' weighted mean in
    its place, i.e. their sum scaled up to the full weight: a resource not embedded yet competes on
    BM25 alone instead of counting as average or worst on the dense side.
    """
    used = [(name, w) for name, w in weights.items() if w and name in scores]
    if not used:
        raise ValueError("no scorer with a non-zero weight")
    size = len(scores[used[0][0]])
    total = np.zeros(size, dtype=np.float64)
    raw = np.zeros(size, dtype=np.float64)
    weight_present = np.zeros(size, dtype=np.float64)
    weight_all = 0.0
    for name, w in used:
        if name in RAW_SCORERS:
            raw += w * np.nan_to_num(scores[name])
            continue
        z = zscore(scores[name])
        present = ~np.isnan(z)
        total += w * np.where(present, z, 0.0)
        weight_present += w * present
        weight_all += w
    if weight_all:
        scale = np.divide(weight_all, weight_present, out=np.zeros(size), where=weight_present != 0)
        total = np.where(weight_present == weight_all, total, total * scale)
    return (total + raw).astype(np.float32)


@dataclass
class FeedbackMemory:
    """What people's evidence said of results for past queries: two scorers, weighted apart.

    `memory`: the query's own evidence (same text, case and spaces aside): each judged resource's
    value in (-1, 1), from likes, dislikes, opens and how long people stayed, each person one voice
    (shared/evidence/judgments.py; versions before it remembered +1 a like, -1 a dislike). Only
    users can judge what it does to the queries they act on (online experiments); it does nothing
    to any other query.
    `neighbours`: the nearest other remembered queries (cosine of their embeddings, at least
    `min_similarity`) vote with their values, weighted by similarity. This is the part that
    reaches queries nobody acted on, and it can hurt them (a neighbour's liked resource is not
    this query's): its weight is fitted on remembered queries scored leave-one-query-out, where 0
    is allowed.
    """

    queries: list[str]
    vectors: np.ndarray
    labels: list[dict[str, float]]
    neighbours: int = 10
    min_similarity: float = 0.4
    _by_text: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_text = {normalise_query(q): i for i, q in enumerate(self.queries)}

    @classmethod
    def build(cls, embedder: SentenceTransformer, entries: list[tuple[str, str, float]]) -> FeedbackMemory:
        """`entries` are (query, resource_id, value in [-1, 1]: what people's evidence says of it,
        shared/evidence); the query text is the key."""
        by_query: dict[str, dict[str, float]] = {}
        for query, resource_id, value in entries:
            by_query.setdefault(query, {})[resource_id] = float(value)
        queries = sorted(by_query)
        vectors = embed(embedder, queries) if queries else np.zeros((0, 1), dtype=np.float32)
        return cls(queries=queries, vectors=vectors, labels=[by_query[q] for q in queries])

    def scores(self, query: str, query_vector: np.ndarray | None, resource_ids: list[str],
               exclude: str | None = None) -> dict[str, np.ndarray]:
        """Both scorers for the candidates `resource_ids`; `exclude`: a query whose own ratings
        are left out (leave-one-query-out evaluation: the query scored is that one)."""
        own = np.zeros(len(resource_ids), dtype=np.float32)
        near = np.zeros(len(resource_ids), dtype=np.float32)
        if not self.queries:
            return {"memory": own, "neighbours": near}
        position = {r: i for i, r in enumerate(resource_ids)}
        itself = self._by_text.get(normalise_query(query))
        left_out = self._by_text.get(normalise_query(exclude)) if exclude is not None else None
        if itself is not None and itself != left_out:
            for resource_id, label in self.labels[itself].items():
                if resource_id in position:
                    own[position[resource_id]] = label
        if query_vector is not None:
            sims = self.vectors @ query_vector
            taken = 0
            for j in np.argsort(-sims):
                if taken == self.neighbours or sims[j] < self.min_similarity:
                    break
                if j in (itself, left_out):
                    continue
                taken += 1
                for resource_id, label in self.labels[j].items():
                    if resource_id in position:
                        near[position[resource_id]] += float(sims[j]) * label
        return {"memory": own, "neighbours": near}

    def restricted_to(self, queries: set[str]) -> FeedbackMemory:
        """Only what was learnt from `queries`: a saved version also remembers its validation
        queries, which must not recall their own labels when it is evaluated on them."""
        keep = [i for i, q in enumerate(self.queries) if q in queries]
        return FeedbackMemory(queries=[self.queries[i] for i in keep], vectors=self.vectors[keep],
                              labels=[self.labels[i] for i in keep], neighbours=self.neighbours,
                              min_similarity=self.min_similarity)

    def save(self, folder: Path) -> None:
        np.save(folder / MEMORY_VECTORS, self.vectors, allow_pickle=False)
        (folder / MEMORY_LABELS).write_text(json.dumps({
            "queries": self.queries, "labels": self.labels,
            "neighbours": self.neighbours, "min_similarity": self.min_similarity}))

    @classmethod
    def load(cls, folder: Path) -> FeedbackMemory:
        meta = json.loads((folder / MEMORY_LABELS).read_text())
        return cls(queries=meta["queries"], vectors=np.load(folder / MEMORY_VECTORS, allow_pickle=False),
                   labels=meta["labels"], neighbours=meta["neighbours"],
                   min_similarity=meta["min_similarity"])


@dataclass
class RankingModel:
    """A loaded pipeline: what the reranker serves and what the trainer evaluates."""

    spec: PipelineSpec
    folder: Path | None = None
    embedder: SentenceTransformer | None = None
    cross: CrossEncoder | None = None
    memory: FeedbackMemory | None = None
    loaded_at: datetime = field(default_factory=utcnow)
    encoder: Encoder | None = None
    """How the embedder runs (ONNX Runtime or torch); unset: torch."""
    depth: int = 0
    """The cross-encoder scores this many of the best candidates by the other scorers (0: all)."""
    cross_cache: ScoreCache | None = None
    """The cross-encoder's scores by (query, text) for this model on its runtime; unset: none kept."""
    pair_tokens: PairTokens | None = None
    """The cross-encoder's token ids per resource text, checked to build its own inputs; unset: the
    tokenizer runs on every pair."""
    # Set while scoring a query that is itself in the memory (leave-one-query-out evaluation).
    memory_exclude: str | None = None

    @classmethod
    def load(cls, spec: PipelineSpec, folder: Path | None, device: str = "auto",
             embedder: SentenceTransformer | None = None) -> RankingModel:
        """Loads every model the spec names; an embedder already loaded for the same id is reused."""
        dense = spec.weights.get("dense") or spec.weights.get("dense_prf")
        if dense and embedder is None:
            embedder = load_embedder(spec.embedding_model or spec.base_model, spec.max_length, device)
        cross = None
        # Loaded even at weight 0: the next run continues from it and the notebook evaluates it.
        if spec.weights.get("cross") or spec.cross_encoder is not None:
            if folder is None or spec.cross_encoder is None:
                raise ValueError("a pipeline with a cross-encoder needs its folder")
            cross = load_cross_encoder(str(folder / spec.cross_encoder), spec.max_length, device,
                                       fallback=False)
        memory = None
        remembers = any(spec.weights.get(name) for name in MEMORY_SCORERS)
        if remembers:
            if folder is None:
                raise ValueError("a pipeline with a feedback memory needs its folder")
            if embedder is None:
                embedder = load_embedder(spec.embedding_model or spec.base_model, spec.max_length, device)
            memory = FeedbackMemory.load(folder)
        keep_embedder = dense or remembers
        return cls(spec=spec, folder=folder, embedder=embedder if keep_embedder else None,
                   cross=cross, memory=memory)

    @property
    def version(self) -> str:
        return self.spec.version

    def embed_texts(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if self.embedder is None:
            raise ValueError("this pipeline has no dense scorer")
        if self.encoder is not None and not progress:
            return self.encoder(texts)
        return embed(self.embedder, texts, progress=progress)

    @property
    def vectors_id(self) -> str | None:
        """The identity its resource vectors are stored under (None: no dense scorer)."""
        if self.embedder is None:
            return None
        return self.encoder.identity if self.encoder is not None else embedder_identity(self.embedder)

    def query_vector(self, query: str) -> np.ndarray | None:
        if self.embedder is None:
            return None
        return self.encoder.query([query])[0] if self.encoder is not None else self.embed_texts([query])[0]

    def shares_scores_of(self, other: RankingModel) -> set[str]:
        """The scorers `other` computes exactly as this model would, whose scores it can hand over
        (an interleaved search scores the champion and the challenger on the same candidates).
        `query_vector` stands for the query's embedding."""
        same = {"bm25"}
        if self.embedder is None or self.embedder is not other.embedder:
            return same
        same |= {"query_vector", "dense"}
        a, b = self.spec, other.spec
        first = ("bm25", "dense")
        if ((a.prf_docs, a.prf_beta, a.prf_terms) == (b.prf_docs, b.prf_beta, b.prf_terms)
                and all(a.weights.get(n, 0.0) == b.weights.get(n, 0.0) for n in first)):
            same |= set(PRF_SCORERS)
        return same

    def score(self, index: CatalogueIndex, query: str, positions: np.ndarray,
              bm25: np.ndarray | None = None, with_cross: bool = False,
              reuse: dict[str, np.ndarray] | None = None,
              language: str | None = None) -> dict[str, np.ndarray]:
        """Every scorer's raw score for the candidates at `positions`, plus `fused`.

        `with_cross`: the loaded cross-encoder scores even at weight 0, so that an evaluation
        can check a saved version's cross-encoder, which serving at weight 0 never runs.
        `reuse`: scores (and `query_vector`) another model computed on the same candidates, taken
        as they are; only pass what `shares_scores_of` allows. `language`: the query's, where the
        search names it (else it is analysed in each resource's own)."""
        positions = np.asarray(positions, dtype=np.int64)
        reuse = reuse or {}
        scores: dict[str, np.ndarray] = {
            "bm25": bm25 if bm25 is not None else index.query_bm25_at(query, positions, language)
        }
        weights = self.spec.weights
        query_vector = reuse["query_vector"] if "query_vector" in reuse else self.query_vector(query)
        if (query_vector is not None and index.has_vectors
                and (weights.get("dense") or weights.get("dense_prf"))):
            scores["dense"] = reuse["dense"] if "dense" in reuse else index.dense(query_vector, positions)
        wanted = [name for name in PRF_SCORERS if weights.get(name)]
        if wanted and all(name in reuse for name in wanted):
            scores |= {name: reuse[name] for name in wanted}
        elif wanted:
            scores |= self.pseudo_relevance(index, query, query_vector, positions, scores, language)
        if self.memory is not None:
            ids = [index.resources[p].id for p in positions]
            scores |= self.memory.scores(query, query_vector, ids, exclude=self.memory_exclude)
        if self.cross is not None and weights.get("cross") and 0 < self.depth < positions.size:
            return self.cascade(index, query, positions, scores)
        if self.cross is not None and (with_cross or weights.get("cross")):
            scores["cross"] = self.cross_scores(query, [index.resources[p].text for p in positions])
        scores["fused"] = fuse(scores, weights)
        return scores

    def cross_scores(self, query: str, texts: list[str]) -> np.ndarray:
        if self.cross is None:
            raise ValueError("this pipeline has no cross-encoder")
        cross, tokens = self.cross, self.pair_tokens
        if self.cross_cache is None:
            return cross_scores(cross, query, texts, tokens=tokens)
        return self.cross_cache.scores(query, texts,
                                       lambda missing: cross_scores(cross, query, missing, tokens=tokens))

    def cascade(self, index: CatalogueIndex, query: str, positions: np.ndarray,
                scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The cross-encoder on the `depth` best candidates by the other scorers; the rest keep that
        order below them (their `cross` is NaN: not scored).

        The reranked ones are fused as at full depth, every other scorer normalised over all the
        candidates, the cross-encoder over those it scored: only its scale can differ from a full
        rerank's, so the top 10 stays that of full depth wherever the candidates past `depth` would
        not have reached it."""
        others = {name: w for name, w in self.spec.weights.items() if name != "cross" and name in scores}
        first = fuse(scores, others) if any(others.values()) else scores["bm25"].astype(np.float32)
        top = np.argsort(-first, kind="stable")[: self.depth]
        cross = np.full(positions.size, np.nan, dtype=np.float32)
        cross[top] = self.cross_scores(query, [index.resources[p].text for p in positions[top]])
        rest = np.ones(positions.size, dtype=bool)
        rest[top] = False
        fused_top = fuse(scores | {"cross": cross}, self.spec.weights)[top]
        fused = first - first[rest].max() + fused_top.min() - 1.0  # below the reranked, in order
        fused[top] = fused_top
        return scores | {"cross": cross, "fused": fused.astype(np.float32)}

    def pseudo_relevance(self, index: CatalogueIndex, query: str, query_vector: np.ndarray | None,
                         positions: np.ndarray, scores: dict[str, np.ndarray],
                         language: str | None = None) -> dict[str, np.ndarray]:
        """BM25 and dense again, the query expanded by its best first-pass results.

        Unsupervised and per query, so it helps queries nobody has rated: the first pass's top
        few are mostly relevant, and their words and embedding add what a short query leaves
        out (on Cranfield +0.017 nDCG@10 on held-out queries; docs/evaluation.md).
        The first pass is BM25 + dense over the same candidates, fused with this spec's weights.
        """
        spec, weights = self.spec, self.spec.weights
        first = {name: weights[name] for name in ("bm25", "dense") if weights.get(name) and name in scores}
        if not first or not spec.prf_docs or not positions.size:
            return {}
        best = positions[np.argsort(-fuse(scores, first), kind="stable")[: spec.prf_docs]]
        out = {}
        if weights.get("bm25_prf"):
            terms = index.expansion_terms(best, query, spec.prf_terms, language)
            out["bm25_prf"] = index.bm25_at(terms, positions)
        if weights.get("dense_prf") and query_vector is not None and index.has_vectors:
            rows, have = index.vectors_of(best)  # the best that have a vector yet
            expanded = query_vector + spec.prf_beta * rows[have].mean(axis=0) if have.any() else query_vector
            out["dense_prf"] = index.dense(expanded / max(float(np.linalg.norm(expanded)), 1e-9), positions)
        return out

    def warm_up(self, index: CatalogueIndex) -> None:
        """One real pass, so the first user request does not pay for lazy initialisation."""
        if len(index):
            top, bm25 = index.bm25_top(index.resources[0].title, 5)
            if top.size:
                self.score(index, index.resources[0].title, top, bm25)


# Chosen on the feedback half of each `make eval` split (a plateau: 0.5-2 for dense_prf,
# 0.25-1 for bm25_prf are within 0.003 nDCG@10 of each other there).
PRF_WEIGHTS = {"dense_prf": 1.0, "bm25_prf": 0.5}


def version_zero(settings: Settings) -> PipelineSpec:
    """BM25 and the base embedding model's dense scores, each with pseudo-relevance feedback:
    better than BM25 before any feedback. `pseudo_relevance_docs=0` leaves BM25 + dense."""
    weights = {"bm25": 1.0, "dense": 1.0} | (PRF_WEIGHTS if settings.pseudo_relevance_docs else {})
    return PipelineSpec(version="v0", base_model=settings.base_model,
                        embedding_model=settings.embedding_model, weights=weights,
                        max_length=settings.max_length, prf_docs=settings.pseudo_relevance_docs)


class VersionRejected(ValueError):
    """A registry version that must not be served, whatever its files contain."""


def served_version(settings: Settings, registry: Registry,
                   name: str | None) -> tuple[PipelineSpec, Path | None]:
    """A version by name as every service loads it: None or `v0` is version 0 (no folder); the rest
    are registry folders, refused unless their pipeline is the version they are named for."""
    if name is None or name == VERSION_ZERO:
        return version_zero(settings), None
    folder = registry.resolve(name)
    spec = PipelineSpec.load(folder)
    if spec.version != folder.name:
        raise VersionRejected(f"folder {folder.name} holds the pipeline of version {spec.version!r}")
    return spec, folder


def load_champion(settings: Settings, registry: Registry,
                  embedder: SentenceTransformer | None = None) -> RankingModel:
    """The registry's champion, or version 0 when nothing has been promoted yet (the trainer, the
    notebook; the reranker goes through `served_version` for its fallbacks)."""
    spec, folder = served_version(settings, registry, registry.champion())
    return RankingModel.load(spec, folder, settings.device, embedder=embedder)
