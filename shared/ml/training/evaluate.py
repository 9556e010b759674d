"""Evaluation: the guide's classification metrics and per-query ranking metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from shared.ml.ranking.pipeline import RankingModel
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.training.dataset import Pair, group_by_query


def dcg(gains: list[float]) -> float:
    return sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at(ranked_gains: list[float], all_gains: list[float], k: int = 10) -> float:
    ideal = dcg(sorted(all_gains, reverse=True)[:k])
    return dcg(ranked_gains[:k]) / ideal if ideal > 0 else 0.0


def mrr_at(ranked_gains: list[float], k: int = 10) -> float:
    return next((1.0 / (i + 1) for i, g in enumerate(ranked_gains[:k]) if g > 0), 0.0)


def ranking_metrics(groups: list[tuple[np.ndarray, np.ndarray]], k: int = 10) -> dict[str, float]:
    """Mean nDCG@k / MRR@k over groups of (gains, scores); groups without a relevant item skipped."""
    ndcgs, mrrs = [], []
    for gains, scores in groups:
        if not np.any(gains > 0):
            continue
        order = np.argsort(-scores, kind="stable")
        ranked = [float(g) for g in gains[order]]
        ndcgs.append(ndcg_at(ranked, [float(g) for g in gains], k))
        mrrs.append(mrr_at(ranked, k))
    return {f"ndcg@{k}": float(np.mean(ndcgs)) if ndcgs else 0.0,
            f"mrr@{k}": float(np.mean(mrrs)) if mrrs else 0.0,
            "queries": float(len(ndcgs))}


def ndcg_per_query(groups: list[tuple[np.ndarray, np.ndarray]], k: int = 10) -> np.ndarray:
    """nDCG@k of each group of (gains, scores) that has a relevant item, in order: paired comparisons."""
    out = []
    for gains, scores in groups:
        if np.any(gains > 0):
            ranked = [float(g) for g in gains[np.argsort(-scores, kind="stable")]]
            out.append(ndcg_at(ranked, [float(g) for g in gains], k))
    return np.array(out, dtype=float)


Z_ONE_SIDED_95 = 1.644854


def surest_gain(baseline: np.ndarray, alternatives: list[np.ndarray]) -> int | None:
    """The alternative whose per-query gain over `baseline` (paired, same queries in the same
    order) has the highest one-sided 95 % lower bound on its mean, if that bound is above 0; None
    when no alternative surely gains. An alternative that helps some queries as much as it hurts
    others is not taken, however high its mean."""
    best, best_bound = None, 0.0
    for i, scores in enumerate(alternatives):
        gains = scores - baseline
        if gains.size < 2:
            continue
        bound = float(gains.mean() - Z_ONE_SIDED_95 * gains.std(ddof=1) / np.sqrt(gains.size))
        if bound > best_bound + 1e-9:
            best, best_bound = i, bound
    return best


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The decision threshold with the best F1 on the training split."""
    if len(set(labels.tolist())) < 2:
        return float(np.median(scores)) if scores.size else 0.0
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = (scores >= threshold).astype(int)
    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "threshold": float(threshold),
    }
    metrics["auc"] = float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else 0.5
    return metrics


@dataclass
class Evaluation:
    metrics: dict[str, float]
    labels: np.ndarray
    scores: np.ndarray
    confusion: list[list[int]] = field(default_factory=list)
    # Each query's raw score per scorer, before fusion: a saved model can be checked against them.
    scorers: list[dict[str, np.ndarray]] = field(default_factory=list)


Groups = list[tuple[np.ndarray, np.ndarray]]


ScoredGroups = list[tuple[np.ndarray, dict[str, np.ndarray]]]


def scored_groups(model: RankingModel, index: CatalogueIndex, pairs: list[Pair],
                  leave_query_out: bool = False, with_cross: bool = False) -> ScoredGroups:
    """Labels and every scorer's raw scores, per query: fusions can be compared without rescoring.

    `leave_query_out`: the feedback memory does not recall the scored query's own labels.
    Only the rated results are scored, so pseudo-relevance feedback expands each query from
    the best of those (mostly the served top 10), not from the served top 50.
    """
    groups = []
    for query_pairs in group_by_query(pairs).values():
        known = [p for p in query_pairs if p.resource_id in index.position]
        if not known:
            continue
        positions = np.array([index.position[p.resource_id] for p in known])
        model.memory_exclude = known[0].query if leave_query_out else None
        try:
            scores = model.score(index, known[0].query, positions, with_cross=with_cross)
        finally:
            model.memory_exclude = None
        groups.append((np.array([p.label for p in known], dtype=float), scores))
    return groups


def pair_scores(model: RankingModel, index: CatalogueIndex, pairs: list[Pair],
                leave_query_out: bool = False) -> tuple[Groups, np.ndarray, np.ndarray]:
    """Fused scores of labelled pairs, normalised within each query's labelled set."""
    return pooled(scored_groups(model, index, pairs, leave_query_out))


def pooled(scored: ScoredGroups) -> tuple[Groups, np.ndarray, np.ndarray]:
    """Per-query (labels, fused scores), and both pooled: concatenated over the queries (`fuse` fuses)."""
    groups = [(labels, scores["fused"]) for labels, scores in scored]
    if not groups:
        return [], np.array([], dtype=int), np.array([], dtype=float)
    return (groups, np.concatenate([g[0] for g in groups]).astype(int),
            np.concatenate([g[1] for g in groups]).astype(float))


def evaluate_pairs(model: RankingModel, index: CatalogueIndex, pairs: list[Pair],
                   threshold: float | None = None, with_cross: bool = False) -> Evaluation:
    """Both metric families on one split; the threshold comes from the training split when given.

    `with_cross`: a cross-encoder at weight 0 is scored too (fusion leaves it out), so that
    `scorers` can check a saved version's cross-encoder against the one just trained."""
    scored = scored_groups(model, index, pairs, with_cross=with_cross)
    groups, labels, scores = pooled(scored)
    if threshold is None:
        threshold = choose_threshold(labels, scores)
    metrics = {**ranking_metrics(groups), **classification_metrics(labels, scores, threshold)}
    predicted = (scores >= threshold).astype(int)
    confusion = confusion_matrix(labels, predicted, labels=[0, 1]).tolist() if labels.size else []
    return Evaluation(metrics=metrics, labels=labels, scores=scores, confusion=confusion,
                      scorers=[raw for _, raw in scored])


def evaluate_split(model: RankingModel, index: CatalogueIndex, train: list[Pair], val: list[Pair],
                   with_cross: bool = False) -> Evaluation:
    """Validation metrics, the decision threshold chosen on the training split.

    The training split is scored leave-one-query-out: the memory, built from it, would
    otherwise recall each query's own labels and set the threshold on answers it knows."""
    _, labels, scores = pair_scores(model, index, train, leave_query_out=True)
    return evaluate_pairs(model, index, val, choose_threshold(labels, scores), with_cross)


def shown_order_auc(pairs: list[Pair], resamples: int = 200, seed: int = 0) -> tuple[float, float] | None:
    """How often a result judged better was shown above one judged worse, for the same query (an
    AUC: 0.5 is chance), and its one-sided 95 % upper bound (queries resampled); None when no
    query has both labels.

    The gate's check that labels are not backwards: the lists people saw were ranked by the
    served versions, which rank what people prefer higher on the whole, and the evidence is
    corrected for position, so honest evidence agrees with that order more often than not and
    flipped evidence disagrees. Comparing with BM25 instead, within lists BM25 and the dense score
    chose together, is biased: a result that made the list with a low BM25 score did so on a high
    dense score (selection on a sum makes its parts anti-correlated), so on a collection where the
    dense score is the better signal honest labels agree with BM25 less than half the time. The
    bound keeps a few queries' noise from rejecting honest evidence (a served version's order
    within its own top ten is only a little better than chance).
    """
    per_query = []
    for group in group_by_query(pairs).values():
        good = [p.rank for p in group if p.label == 1]
        bad = [p.rank for p in group if p.label == 0]
        agree = sum(1.0 if g < b else 0.5 if g == b else 0.0 for g in good for b in bad)
        if good and bad:
            per_query.append((agree, len(good) * len(bad)))
    if not per_query:
        return None
    agree, total = np.array(per_query).T
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_query), size=(resamples, len(per_query)))
    resampled = agree[picks].sum(axis=1) / total[picks].sum(axis=1)
    return float(agree.sum() / total.sum()), float(np.percentile(resampled, 95))
