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
from typing import Any, Literal

import numpy as np
import sentence_transformers
import torch
import transformers

from shared.events import utcnow
from shared.ml.dataset import Pair, split_by_query
from shared.ml.evaluate import (
    Evaluation,
    classification_metrics,
    evaluate_split,
    pair_scores,
    ranking_metrics,
    scored_groups,
)
from shared.ml.model import load_cross_encoder, load_embedder
from shared.ml.pipeline import FeedbackMemory, PipelineSpec, RankingModel, fuse
from shared.ml.registry import Registry
from shared.ml.report import html_report, text_report
from shared.ml.retrieval import CatalogueIndex, VectorTable
from shared.ml.train import TrainConfig, TrainResult, fine_tune
from shared.ml.vectors import EmbeddingCache, StoredVectors
from shared.settings import OFFLINE_BASE_MODEL, Settings, from_settings, setting
from shared.store import Resource

log = logging.getLogger(__name__)

CROSS_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
# Never 0: every candidate carries what its feedback taught; the gate decides whether it serves.
MEMORY_WEIGHTS = (0.25, 0.5, 1.0, 2.0)
CE_FOLDER = "."


Decision = Literal["promoted", "challenger", "rejected"]


def promotes_online(settings: Settings) -> bool:
    return settings.promotion == "online"


@dataclass
class Gate:
    metric: str = setting("gate_metric")
    margin: float = setting("gate_margin")
    min_prior_auc: float = setting("gate_min_prior_auc")
    # online: no promotion offline; a candidate that passes the safety checks becomes the challenger.
    online: bool = promotes_online(Settings.model_construct())
    safety_margin: float = setting("gate_safety_margin")

    @classmethod
    def from_settings(cls, settings: Settings) -> Gate:
        return from_settings(cls, settings, online=promotes_online(settings))

    def decide(self, candidate: dict[str, float], champion: dict[str, float],
               bm25: dict[str, float], prior_auc: float | None = None) -> tuple[bool, str]:
        """Promote only if not worse than the champion and than BM25 alone, by more than the margin.

        Feedback is also checked against BM25 itself (`prior_auc`, over all pairs): real users'
        likes agree with a lexical match more often than not; labels that BM25 ranks backwards
        look flipped or adversarial, and whatever they taught would look good on their own
        validation split.
        """
        flipped = self.flipped(prior_auc)
        if flipped:
            return False, flipped
        c, ch, b = candidate.get(self.metric, 0.0), champion.get(self.metric, 0.0), bm25.get(self.metric, 0.0)
        if c < ch - self.margin:
            return False, f"{self.metric} {c:.4f} is below the champion's {ch:.4f} (margin {self.margin})"
        if c < b - self.margin:
            return False, f"{self.metric} {c:.4f} is below BM25 alone {b:.4f} (margin {self.margin})"
        return True, f"{self.metric} {c:.4f} vs champion {ch:.4f} and BM25 {b:.4f}"

    def flipped(self, prior_auc: float | None) -> str | None:
        if prior_auc is not None and prior_auc < self.min_prior_auc:
            return (f"feedback contradicts BM25 (AUC {prior_auc:.3f} < {self.min_prior_auc}): "
                    "labels look flipped or adversarial")
        return None

    def review(self, candidate: dict[str, float], champion: dict[str, float],
                bm25: dict[str, float], prior_auc: float | None = None) -> tuple[Decision, str]:
        """Offline: `decide`. Online: only safety checks here; users decide between champion and
        challenger by interleaving, because offline validation cannot (the memory is inert on
        unseen queries, the sample is what the champion chose to show, a few queries are noise)."""
        if not self.online:
            promoted, reason = self.decide(candidate, champion, bm25, prior_auc)
            return ("promoted" if promoted else "rejected"), reason
        flipped = self.flipped(prior_auc)
        if flipped:
            return "rejected", flipped
        c, b = candidate.get(self.metric, 0.0), bm25.get(self.metric, 0.0)
        if c < b - self.safety_margin:
            return "rejected", (f"{self.metric} {c:.4f} is below BM25 alone {b:.4f} by more than the "
                                f"safety margin {self.safety_margin}")
        return "challenger", (f"safe to try on users ({self.metric} {c:.4f}, BM25 {b:.4f}, champion "
                              f"{champion.get(self.metric, 0.0):.4f} on validation): users decide online")


@dataclass
class CandidateResult:
    version: str
    decision: Decision
    reason: str
    metadata: dict[str, Any]
    folder: Path
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    train_result: TrainResult | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


def index_for_pairs(resources: list[Resource], pairs: list[Pair], model: RankingModel,
                    stored: StoredVectors | None = None) -> CatalogueIndex:
    """BM25 over the whole catalogue (its statistics matter), embeddings only where pairs need them:
    read from `stored` where the reranker (or an earlier run) already embedded them."""
    index = CatalogueIndex(resources)
    if model.embedder is not None and model.vectors_id is not None and resources:
        needed = sorted({index.position[p.resource_id] for p in pairs if p.resource_id in index.position})
        cache = EmbeddingCache(model.embed_texts, model.vectors_id, stored)
        vectors = cache([resources[i].text for i in needed]) if needed else None
        dim = vectors.shape[1] if vectors is not None else 1
        index.vectors = VectorTable(dim, len(resources), model.vectors_id)
        if vectors is not None:
            index.vectors.put(np.asarray(needed), vectors)
    return index


def bm25_only(base_model: str) -> RankingModel:
    return RankingModel(spec=PipelineSpec(version="bm25", base_model=base_model, weights={"bm25": 1.0}))


def choose_weights(champion: RankingModel, candidate: RankingModel, index: CatalogueIndex,
                   train: list[Pair], grid: dict[str, tuple[float, ...]]) -> dict[str, float]:
    """The fusion weights of the learned scorers that rank the training split best.

    Every scorer runs once per query (the cross-encoder is the expensive one); each weight
    combination only re-fuses. The memory is scored leave-one-query-out, so a query never
    recalls its own labels. Ties keep the earlier (smaller) weight.
    """
    names = list(grid)
    candidate.spec = candidate.spec.model_copy(update={"weights": {
        **champion.spec.weights, **{name: max(grid[name]) for name in names}}})
    groups = scored_groups(candidate, index, train, leave_query_out=True)
    combos: list[tuple[float, ...]] = [()]
    for name in names:
        combos = [c + (w,) for c in combos for w in grid[name]]
    best_weights, best = dict(champion.spec.weights), -1.0
    for combo in combos:
        weights = {**champion.spec.weights, **dict(zip(names, combo, strict=True))}
        score = ranking_metrics([(labels, fuse(scores, weights)) for labels, scores in groups])["ndcg@10"]
        if score > best + 1e-9:
            best_weights, best = weights, score
    return best_weights


def why_no_cross_encoder(settings: Settings) -> str | None:
    """None when this run fine-tunes a cross-encoder; else why not, in the words the reports use.

    `auto` trains none from the offline bi-encoder weights: loaded as a cross-encoder their
    scoring head is random, and a few hundred pairs leave it far below BM25.
    """
    if settings.train_cross_encoder == "off":
        return "EDURANKER_TRAIN_CROSS_ENCODER=off"
    if settings.train_cross_encoder == "auto" and settings.base_model == OFFLINE_BASE_MODEL:
        return (f"EDURANKER_TRAIN_CROSS_ENCODER=auto trains none from the offline weights "
                f"({OFFLINE_BASE_MODEL}, a bi-encoder: as a cross-encoder its scoring head starts random, "
                "and a few hundred pairs leave it far below BM25); `on` trains one anyway")
    return None


def train_candidate(settings: Settings, pairs: list[Pair], index: CatalogueIndex, champion: RankingModel,
                    registry: Registry, config: TrainConfig | None = None, gate: Gate | None = None,
                    progress: Callable[[str], None] | None = None, show_bar: bool = False,
                    extra_metadata: dict[str, Any] | None = None,
                    switch_champion: bool = True) -> CandidateResult:
    """`switch_champion=False`: the caller moves the pointer itself, after recording the version."""
    config = config or TrainConfig.from_settings(settings)
    gate = gate or Gate.from_settings(settings)
    started = time.perf_counter()
    train, val = split_by_query(pairs, 0.2, config.seed)
    bm25 = bm25_only(champion.spec.base_model)

    before = {"champion": evaluate_split(champion, index, train, val),
              "bm25": evaluate_split(bm25, index, train, val)}
    embedder = champion.embedder or load_embedder(
        champion.spec.embedding_model or settings.embedding_model, settings.max_length, settings.device)
    grid: dict[str, tuple[float, ...]] = {"memory": MEMORY_WEIGHTS}
    cross, result, start_from = champion.cross, None, None
    skipped_cross = why_no_cross_encoder(settings)
    if skipped_cross is None:
        start_from = str(champion.folder / champion.spec.cross_encoder) if (
            champion.cross is not None and champion.folder and champion.spec.cross_encoder
        ) else settings.base_model
        torch.manual_seed(config.seed)  # a new scoring head starts random: seeded, a run can be repeated
        cross = load_cross_encoder(start_from, settings.max_length, settings.device)
        result = fine_tune(cross, train, val, config, progress=progress, show_bar=show_bar)
        grid["cross"] = CROSS_WEIGHTS
    spec = champion.spec.model_copy(update={
        "base_model": champion.spec.base_model, "trained_at": utcnow(),
        "embedding_model": champion.spec.embedding_model or settings.embedding_model,
        "cross_encoder": CE_FOLDER if cross is not None else None,
    })
    # Every rated query is embedded once; the gate sees only what the training split taught.
    memory = FeedbackMemory.build(embedder, [(p.query, p.resource_id, p.label) for p in pairs])
    candidate = RankingModel(spec=spec, embedder=embedder, cross=cross,
                             memory=memory.restricted_to({p.query for p in train}),
                             encoder=champion.encoder if embedder is champion.embedder else None)
    candidate.spec = candidate.spec.model_copy(
        update={"weights": choose_weights(champion, candidate, index, train, grid)})
    # Its cross-encoder scored even at weight 0: the notebook checks the saved one against it.
    evaluations = {**before, "candidate": evaluate_split(candidate, index, train, val, with_cross=True)}
    metrics = {name: ev.metrics for name, ev in evaluations.items()}
    decision: Decision
    if not val:
        decision, reason = "rejected", "no validation queries: feedback covers too few distinct queries"
    else:
        _, all_labels, all_scores = pair_scores(bm25, index, pairs)
        prior_auc = classification_metrics(all_labels, all_scores, 0.0)["auc"]
        metrics["bm25"]["auc_all_pairs"] = prior_auc
        decision, reason = gate.review(metrics["candidate"], metrics["champion"], metrics["bm25"], prior_auc)
    version = registry.next_version()
    train_s = result.seconds if result else 0.0
    candidate.spec = candidate.spec.model_copy(update={
        "version": version, "metrics": {k: v for k, v in metrics["candidate"].items()}})
    meta = {
        "version": version,
        "decision": decision,
        "reason": reason,
        "champion_version": champion.version,
        "weights": candidate.spec.weights,
        "champion_weights": champion.spec.weights,
        "dataset": {"pairs": len(pairs), "train": len(train), "validation": len(val),
                    "train_queries": sorted({p.query for p in train}),
                    "validation_queries": sorted({p.query for p in val}),
                    "likes": sum(p.label for p in pairs),
                    "split": {"by": "query", "stratified_by": "label", "validation_share": 0.2,
                              "seed": config.seed, "train_likes": sum(p.label for p in train),
                              "validation_likes": sum(p.label for p in val)}},
        "hyperparameters": result.config if result else {},
        "cross_encoder_trained": result is not None,
        "cross_encoder_skipped": skipped_cross,
        "metrics": metrics,
        "gate": {"metric": gate.metric, "margin": gate.margin, "online": gate.online,
                 "safety_margin": gate.safety_margin},
        "durations": {"train_s": train_s, "total_s": time.perf_counter() - started},
        "loss_history": result.loss_history if result else [],
        "started_from": start_from,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__},
        "created_at": utcnow().isoformat(),
        **(extra_metadata or {}),
    }

    # Model selection happened on the split; what is served then remembers every query users rated
    # (validation ones too), the way a model is refit on all its data once its settings are chosen.
    meta["memory_queries"] = len(memory.queries)
    votes = [label for labels in memory.labels for label in labels.values()]
    meta["memory"] = {"queries": len(memory.queries),
                      "resources": len({r for labels in memory.labels for r in labels}),
                      "likes": votes.count(1), "dislikes": votes.count(-1)}

    def write(folder: Path) -> None:
        if cross is not None:
            cross.save_pretrained(str(folder))
        memory.save(folder)
        candidate.spec.save(folder)
        (folder / "training_metadata.json").write_text(json.dumps(meta, indent=2, default=float))
        (folder / "training_report.txt").write_text(text_report(meta))
        (folder / "report.html").write_text(html_report(meta, meta["loss_history"], evaluations))

    folder = registry.write_version(version, write)
    if decision == "promoted" and switch_champion:
        registry.set_champion(version)
    candidate.folder = folder
    log.info("event=candidate_done version=%s decision=%s reason=%r", version, decision, reason)
    return CandidateResult(version=version, decision=decision, reason=reason, metadata=meta, folder=folder,
                           evaluations=evaluations, train_result=result)


def summarise(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flat metrics for events and the store: candidate_*, champion_*, bm25_*."""
    return {f"{model}_{name}": float(value) for model, values in metrics.items()
            for name, value in values.items() if isinstance(value, int | float) and not np.isnan(value)}
