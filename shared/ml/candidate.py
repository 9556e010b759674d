"""One training run from labelled pairs to a registry version: the trainer's and the notebook's core.

Steps: split by query, evaluate the champion and BM25 alone, fine-tune the cross-encoder,
fit its fusion weight, evaluate the candidate, apply the gate, write the version folder.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sentence_transformers
import torch
import transformers

from shared.events import utcnow
from shared.ml.dataset import Pair, split_by_query
from shared.ml.evaluate import Evaluation, choose_threshold, evaluate_pairs, pair_scores, ranking_metrics
from shared.ml.model import load_cross_encoder
from shared.ml.pipeline import PipelineSpec, RankingModel
from shared.ml.registry import Registry
from shared.ml.report import html_report, text_report
from shared.ml.retrieval import CatalogueIndex
from shared.ml.train import TrainConfig, TrainResult, fine_tune
from shared.settings import Settings
from shared.store import Resource

log = logging.getLogger(__name__)

CROSS_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
CE_FOLDER = "."


@dataclass
class Gate:
    metric: str = "ndcg@10"
    margin: float = 0.0

    def decide(self, candidate: dict[str, float], champion: dict[str, float],
               bm25: dict[str, float]) -> tuple[bool, str]:
        """Promote only if not worse than the champion and than BM25 alone, by more than the margin."""
        c, ch, b = candidate.get(self.metric, 0.0), champion.get(self.metric, 0.0), bm25.get(self.metric, 0.0)
        if c < ch - self.margin:
            return False, f"{self.metric} {c:.4f} is below the champion's {ch:.4f} (margin {self.margin})"
        if c < b - self.margin:
            return False, f"{self.metric} {c:.4f} is below BM25 alone {b:.4f} (margin {self.margin})"
        return True, f"{self.metric} {c:.4f} vs champion {ch:.4f} and BM25 {b:.4f}"


@dataclass
class CandidateResult:
    version: str
    promoted: bool
    reason: str
    metadata: dict[str, Any]
    folder: Path
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    train_result: TrainResult | None = None


def index_for_pairs(resources: list[Resource], pairs: list[Pair], model: RankingModel) -> CatalogueIndex:
    """BM25 over the whole catalogue (its statistics matter), embeddings only where pairs need them."""
    index = CatalogueIndex(resources)
    if model.embedder is not None and resources:
        needed = sorted({index.position[p.resource_id] for p in pairs if p.resource_id in index.position})
        vectors = model.embed_texts([resources[i].text for i in needed]) if needed else None
        dim = vectors.shape[1] if vectors is not None else 1
        index.embeddings = np.zeros((len(resources), dim), dtype=np.float32)
        if vectors is not None:
            index.embeddings[needed] = vectors
    return index


def bm25_only(base_model: str) -> RankingModel:
    return RankingModel(spec=PipelineSpec(version="bm25", base_model=base_model, weights={"bm25": 1.0}))


def choose_cross_weight(champion: RankingModel, candidate: RankingModel, index: CatalogueIndex,
                        train: list[Pair]) -> float:
    """The fusion weight of the new cross-encoder that ranks the training split best."""
    best_weight, best = CROSS_WEIGHTS[0], -1.0
    base = dict(champion.spec.weights)
    for weight in CROSS_WEIGHTS:
        candidate.spec = candidate.spec.model_copy(update={"weights": {**base, "cross": weight}})
        groups, _, _ = pair_scores(candidate, index, train)
        score = ranking_metrics(groups)["ndcg@10"]
        if score > best + 1e-9:
            best_weight, best = weight, score
    return best_weight


def train_candidate(settings: Settings, pairs: list[Pair], index: CatalogueIndex, champion: RankingModel,
                    registry: Registry, config: TrainConfig | None = None, gate: Gate | None = None,
                    progress: Callable[[str], None] | None = None, show_bar: bool = False,
                    extra_metadata: dict[str, Any] | None = None) -> CandidateResult:
    config = config or TrainConfig.from_settings(settings)
    gate = gate or Gate(settings.gate_metric, settings.gate_margin)
    started = time.perf_counter()
    train, val = split_by_query(pairs, 0.2, config.seed)
    bm25 = bm25_only(champion.spec.base_model)

    def evaluate(model: RankingModel) -> Evaluation:
        _, labels, scores = pair_scores(model, index, train)
        return evaluate_pairs(model, index, val, threshold=choose_threshold(labels, scores))

    before = {"champion": evaluate(champion), "bm25": evaluate(bm25)}
    base = champion.cross or None
    start_from = str(champion.folder / champion.spec.cross_encoder) if (
        base is not None and champion.folder and champion.spec.cross_encoder) else settings.base_model
    cross = load_cross_encoder(start_from, settings.max_length, settings.device)
    result = fine_tune(cross, train, val, config, progress=progress, show_bar=show_bar)
    spec = champion.spec.model_copy(update={
        "base_model": champion.spec.base_model, "cross_encoder": CE_FOLDER, "trained_at": utcnow(),
    })
    candidate = RankingModel(spec=spec, embedder=champion.embedder, cross=cross)
    weight = choose_cross_weight(champion, candidate, index, train)
    candidate.spec = candidate.spec.model_copy(
        update={"weights": {**champion.spec.weights, "cross": weight}})
    evaluations = {"champion": before["champion"], "bm25": before["bm25"], "candidate": evaluate(candidate)}
    metrics = {name: ev.metrics for name, ev in evaluations.items()}
    if not val:
        promoted, reason = False, "no validation queries: feedback covers too few distinct queries"
    else:
        promoted, reason = gate.decide(metrics["candidate"], metrics["champion"], metrics["bm25"])
    version = registry.next_version()
    candidate.spec = candidate.spec.model_copy(update={
        "version": version, "metrics": {k: v for k, v in metrics["candidate"].items()}})
    meta = {
        "version": version,
        "decision": "promoted" if promoted else "rejected",
        "reason": reason,
        "champion_version": champion.version,
        "weights": candidate.spec.weights,
        "dataset": {"pairs": len(pairs), "train": len(train), "validation": len(val),
                    "train_queries": sorted({p.query for p in train}),
                    "validation_queries": sorted({p.query for p in val}),
                    "likes": sum(p.label for p in pairs)},
        "hyperparameters": result.config,
        "metrics": metrics,
        "gate": {"metric": gate.metric, "margin": gate.margin},
        "durations": {"train_s": result.seconds, "total_s": time.perf_counter() - started},
        "loss_history": result.loss_history,
        "started_from": start_from,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__},
        "created_at": utcnow().isoformat(),
        **(extra_metadata or {}),
    }

    def write(folder: Path) -> None:
        cross.save_pretrained(str(folder))
        candidate.spec.save(folder)
        (folder / "training_metadata.json").write_text(json.dumps(meta, indent=2, default=float))
        (folder / "training_report.txt").write_text(text_report(meta))
        (folder / "report.html").write_text(html_report(meta, result.loss_history, evaluations))

    folder = registry.write_version(version, write)
    if promoted:
        registry.set_champion(version)
    candidate.folder = folder
    log.info("event=candidate_done version=%s decision=%s reason=%r", version, meta["decision"], reason)
    return CandidateResult(version=version, promoted=promoted, reason=reason, metadata=meta, folder=folder,
                           evaluations=evaluations, train_result=result)


def summarise(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flat metrics for events and the store: candidate_*, champion_*, bm25_*."""
    return {f"{model}_{name}": float(value) for model, values in metrics.items()
            for name, value in values.items() if isinstance(value, int | float) and not np.isnan(value)}
