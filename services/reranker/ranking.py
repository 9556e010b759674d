"""One search's ranking: BM25 candidates, the served pipeline, and (in an experiment) interleaving.

Outside experiments, a small share of reranked rankings (`EDURANKER_EXPLORE_SHARE`) swap two
neighbours among their first ten (half of them the first two), so that the click model sees results
at more than one rank (shared/evidence/clicks.py).

Runs on the model thread. The first stage scores the whole catalogue, applies the search's filters,
then picks the best `candidates`, so a filtered search reranks the best matching resources; its
facet counts are taken over that whole match. The ranking a search's pages share is the reranked
candidates, then the rest of the match in BM25 order; a page is its slice from `offset`, the same
resources in the same order whatever the page (ties broken by position), so pages neither repeat
nor skip a result on a stable catalogue.

While an experiment runs, the share of reranked searches that its hash of the ranking id selects
is answered with a probabilistic interleaving of the champion's and the challenger's rankings of
the same candidates (every candidate, so that credit reaches deep into both rankings); the ranking
id is the first page's inference id, so a later page continues the same interleaved list. The
challenger reuses whatever scores the two compute alike (BM25, the query embedding, dense and
pseudo-relevance scores when they share the embedding model), so an interleaved search costs
little more than a plain one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.reranker.indexes import ServingState
from shared import metrics
from shared.evidence.clicks import explored, swapped
from shared.online.interleaving import CHALLENGER_PREFIX, TAU, interleave, takes_part
from shared.records import InterleavingRecord
from shared.vocab import Team


@dataclass(frozen=True)
class Ranked:
    positions: np.ndarray
    scores: dict[str, np.ndarray]
    """Per position: BM25, and for the reranked candidates the champion's scorers and `fused` (NaN
    past them); the challenger's under `challenger.`."""
    order: list[int]
    """The shown results, as indexes into `positions`."""
    teams: list[Team | None] | None = None
    shares: list[float | None] | None = None
    """Per shown result: the challenger's share of its credit (None past the interleaved candidates)."""
    interleaving: InterleavingRecord | None = None
    explored: int | None = None
    """Outside experiments: the rank whose result was swapped with the next one (None: none was)."""
    total: int = 0
    """Resources that match the query and every filter."""
    facets: dict[str, dict[str, int]] = field(default_factory=dict)
    reranked: int = 0
    """Candidates the served pipeline scored (0: BM25 order alone)."""

    def rerank_score(self, shown: int) -> float | None:
        """The fused score of the ranker that placed the result (the champion's outside experiments);
        None for a result past the reranked candidates."""
        i = self.order[shown]
        if self.teams is not None and self.teams[shown] == "challenger":
            return float(self.scores[CHALLENGER_PREFIX + "fused"][i])
        if "fused" not in self.scores or np.isnan(self.scores["fused"][i]):
            return None
        return float(self.scores["fused"][i])


def rank(state: ServingState, query: str, use_reranker: bool, n_candidates: int, top_k: int,
         ranking_id: str, *, offset: int = 0, filters: Mapping[str, Sequence[str]] | None = None,
         facets: Sequence[str] = (), language: str | None = None, explore_share: float = 0.0) -> Ranked:
    """The page of `top_k` results from `offset` of the query's ranking. `ranking_id` decides
    whether it is interleaved, and how: the first page's inference id."""
    index = state.index
    match = index.match(query, filters, language)
    window = max(n_candidates, top_k) if use_reranker else 0
    end = offset + top_k
    positions, bm25 = match.top(max(window, end))
    total, counts = match.total, match.facets(facets)
    if not use_reranker or not positions.size or offset >= window:  # BM25 order alone
        return Ranked(positions, {"bm25": bm25}, list(range(offset, min(end, positions.size))), total=total,
                      facets=counts)
    candidates, rest = positions[:window], np.arange(min(window, positions.size), positions.size)
    start = time.perf_counter()
    champion = state.model
    challenger = state.challenger
    interleaved = challenger is not None and takes_part(ranking_id, challenger.experiment.experiment_id,
                                                       challenger.experiment.share)
    reuse: dict[str, np.ndarray] = {}
    if interleaved and challenger is not None and challenger.index is None:
        vector = champion.query_vector(query) if "query_vector" in champion.shares_scores_of(
            challenger.model) else None
        if vector is not None:
            reuse["query_vector"] = vector
    first = bm25[:candidates.size]
    scores = champion.score(index, query, candidates, first, reuse=reuse, language=language)
    champion_order = np.argsort(-scores["fused"], kind="stable")
    if not interleaved or challenger is None:
        metrics.RERANK_DURATION.observe(time.perf_counter() - start)
        metrics.RERANK_CANDIDATES.observe(candidates.size)
        ranking = [*champion_order.tolist(), *rest.tolist()]
        swap = explored(ranking_id, explore_share, len(ranking))
        if swap is not None and offset == 0:
            metrics.EXPLORED_SEARCHES.inc()
        return Ranked(positions, padded(scores, bm25), swapped(ranking, swap)[offset:end], total=total,
                      facets=counts, reranked=candidates.size, explored=swap)
    shared = champion.shares_scores_of(challenger.model) if challenger.index is None else {"bm25"}
    handed = {name: value for name, value in scores.items() if name in shared} | reuse
    theirs = challenger.model.score(challenger.index or index, query, candidates, first, reuse=handed,
                                    language=language)
    challenger_order = np.argsort(-theirs["fused"], kind="stable")
    ids = [index.resources[p].id for p in candidates]
    shown = interleave([ids[i] for i in champion_order], [ids[i] for i in challenger_order],
                       min(end, candidates.size), seed=ranking_id)
    where = {resource_id: i for i, resource_id in enumerate(ids)}
    experiment = challenger.experiment
    record = InterleavingRecord(
        experiment_id=experiment.experiment_id, kind=experiment.kind, champion=champion.version,
        challenger=challenger.model.version,
        champion_ranking=[ids[i] for i in champion_order[:end]],
        challenger_ranking=[ids[i] for i in challenger_order[:end]], tau=TAU)
    together = scores | {CHALLENGER_PREFIX + name: value for name, value in theirs.items()
                         if name not in shared}
    metrics.RERANK_DURATION.observe(time.perf_counter() - start)
    metrics.RERANK_CANDIDATES.observe(candidates.size)
    metrics.EXPERIMENT_IMPRESSIONS.labels(experiment.kind).inc()
    past = [None] * rest.size
    ranking = [*(where[p.resource_id] for p in shown), *rest.tolist()]
    teams: list[Team | None] = [*(p.team for p in shown), *past]
    shares: list[float | None] = [*(p.share for p in shown), *past]
    return Ranked(positions, padded(together, bm25), ranking[offset:end], teams[offset:end],
                  shares[offset:end], record, total=total, facets=counts, reranked=candidates.size)


def padded(scores: dict[str, np.ndarray], bm25: np.ndarray) -> dict[str, np.ndarray]:
    """The candidates' scores extended to every ranked position: BM25 for all, NaN past the candidates."""
    out = {"bm25": bm25}
    for name, values in scores.items():
        if name != "bm25":
            out[name] = np.concatenate([values, np.full(bm25.size - values.size, np.nan, dtype=np.float32)])
    return out
