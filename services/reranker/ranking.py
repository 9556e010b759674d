"""One search's ranking: BM25 candidates, the served pipeline, and (in an experiment) interleaving.

Runs on the model thread. While an experiment runs, the share of reranked searches that its
hash of the inference id selects is answered with a probabilistic interleaving of the champion's
and the challenger's rankings of the same candidates (every candidate, so that credit reaches
deep into both rankings); the challenger reuses whatever scores the
two compute alike (BM25, the query embedding, dense and pseudo-relevance scores when they
share the embedding model), so an interleaved search costs little more than a plain one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from services.reranker.serving import ServingState
from shared import metrics
from shared.interleaving import CHALLENGER_PREFIX, TAU, Team, interleave, takes_part
from shared.store import InterleavingRecord


@dataclass(frozen=True)
class Ranked:
    positions: np.ndarray
    scores: dict[str, np.ndarray]
    """Per candidate: the champion's scorers and `fused`; the challenger's under `challenger.`."""
    order: list[int]
    """The shown results, as indexes into `positions`."""
    teams: list[Team] | None = None
    shares: list[float] | None = None
    """Per shown result: the challenger's share of its credit."""
    interleaving: InterleavingRecord | None = None

    def rerank_score(self, shown: int) -> float | None:
        """The fused score of the ranker that placed the result (the champion's outside experiments)."""
        i = self.order[shown]
        if self.teams is not None and self.teams[shown] == "challenger":
            return float(self.scores[CHALLENGER_PREFIX + "fused"][i])
        return float(self.scores["fused"][i]) if "fused" in self.scores else None


def rank(state: ServingState, query: str, use_reranker: bool, n_candidates: int, top_k: int,
         inference_id: str) -> Ranked:
    index = state.index
    positions, bm25 = index.bm25_top(query, max(n_candidates, top_k) if use_reranker else top_k)
    if not use_reranker or not positions.size:
        return Ranked(positions, {"bm25": bm25}, list(range(positions.size))[:top_k])
    start = time.perf_counter()
    champion = state.model
    challenger = state.challenger
    interleaved = challenger is not None and takes_part(inference_id, challenger.experiment.experiment_id,
                                                       challenger.experiment.share)
    reuse: dict[str, np.ndarray] = {}
    if interleaved and challenger is not None and challenger.index is None:
        vector = champion.query_vector(query) if "query_vector" in champion.shares_scores_of(
            challenger.model) else None
        if vector is not None:
            reuse["query_vector"] = vector
    scores = champion.score(index, query, positions, bm25, reuse=reuse)
    champion_order = np.argsort(-scores["fused"], kind="stable")
    if not interleaved or challenger is None:
        metrics.RERANK_DURATION.observe(time.perf_counter() - start)
        metrics.RERANK_CANDIDATES.observe(positions.size)
        return Ranked(positions, scores, [int(i) for i in champion_order[:top_k]])
    shared = champion.shares_scores_of(challenger.model) if challenger.index is None else {"bm25"}
    handed = {name: value for name, value in scores.items() if name in shared} | reuse
    theirs = challenger.model.score(challenger.index or index, query, positions, bm25, reuse=handed)
    challenger_order = np.argsort(-theirs["fused"], kind="stable")
    ids = [index.resources[p].id for p in positions]
    shown = interleave([ids[i] for i in champion_order], [ids[i] for i in challenger_order], top_k,
                       seed=inference_id)
    where = {resource_id: i for i, resource_id in enumerate(ids)}
    experiment = challenger.experiment
    record = InterleavingRecord(
        experiment_id=experiment.experiment_id, kind=experiment.kind, champion=champion.version,
        challenger=challenger.model.version,
        champion_ranking=[ids[i] for i in champion_order[:top_k]],
        challenger_ranking=[ids[i] for i in challenger_order[:top_k]], tau=TAU)
    together = scores | {CHALLENGER_PREFIX + name: value for name, value in theirs.items()
                         if name not in shared}
    metrics.RERANK_DURATION.observe(time.perf_counter() - start)
    metrics.RERANK_CANDIDATES.observe(positions.size)
    metrics.EXPERIMENT_IMPRESSIONS.labels(experiment.kind).inc()
    return Ranked(positions, together, [where[p.resource_id] for p in shown], [p.team for p in shown],
                  [p.share for p in shown], record)
