"""One training run, from the store's feedback to a registry version: the trainer's and the notebook's core.

`read_training_data` reads what a run learns from and `champion_and_index` what it starts from;
`train_candidate` then runs these steps, in this order, each a function below:

1. `split_pairs`: training and validation pairs, 80/20 by query, seeded;
2. `evaluate_baseline`: the champion and BM25 alone on the validation queries;
3. `fine_tune_cross_encoder`: from the champion's cross-encoder or the base model, or none (and why);
4. `assemble_candidate`: the champion's pipeline with this cross-encoder and a feedback memory;
5. `choose_weights`: the fusion weights that rank the training split best;
6. `review_candidate`: the candidate on the validation queries, and the gate's decision;
7. `write_version`: model files, metadata and reports, written atomically as a registry version.

A run ends with a candidate and its decision; the champion pointer never moves here: what the
decision changes is the trainer's lifecycle's to do (`services/trainer/lifecycle.py`).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import sentence_transformers
import torch
import transformers
from sentence_transformers import CrossEncoder

from shared.ml.ranking.backends import onnx_cache
from shared.ml.ranking.fields import DEFAULT_SCHEMA, CatalogueSchema
from shared.ml.ranking.pipeline import FeedbackMemory, PipelineSpec, RankingModel, fuse, load_champion
from shared.ml.ranking.retrieval import CatalogueIndex, VectorTable
from shared.ml.registry import Registry
from shared.ml.runtime.embedder import load_encoder
from shared.ml.runtime.loading import load_cross_encoder, load_embedder
from shared.ml.runtime.vectors import EmbeddingCache, StoredVectors
from shared.ml.training.dataset import (
    Evidence,
    Pair,
    build_pairs,
    gather_evidence,
    memory_entries,
    split_by_query,
)
from shared.ml.training.evaluate import (
    Evaluation,
    evaluate_split,
    ndcg_per_query,
    scored_groups,
    shown_order_auc,
    surest_gain,
)
from shared.ml.training.gate import Gate
from shared.ml.training.hyperparameters import TrainConfig
from shared.ml.training.report import html_report, text_report
from shared.ml.training.train import TrainResult, fine_tune
from shared.records import Feedback, Inference, Interaction, Resource, utcnow
from shared.settings import OFFLINE_BASE_MODEL, Settings
from shared.store import Store
from shared.vocab import GateDecision

log = logging.getLogger(__name__)

VALIDATION_SHARE = 0.2
CROSS_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
# The neighbours' votes reach queries nobody rated. 0 is allowed; above 0.5, leave-one-query-out on
# the rated results still saw gains where queries nobody rated lost up to 0.012 nDCG@10
# (bench/studies/memory.py, docs/trainer.md).
NEIGHBOUR_WEIGHTS = (0.0, 0.25, 0.5)
CE_FOLDER = "."


def train_candidate(settings: Settings, pairs: list[Pair], index: CatalogueIndex, champion: RankingModel,
                    registry: Registry, config: TrainConfig | None = None, gate: Gate | None = None,
                    progress: Callable[[str], None] | None = None, show_bar: bool = False,
                    extra_metadata: dict[str, Any] | None = None,
                    remembered: list[tuple[str, str, float]] | None = None) -> CandidateResult:
    """The run's steps in order: a new version folder and its gate's decision (see the module).

    `remembered`: what the feedback memory recalls (`TrainingData.memory`: every judged result's
    value); without it, the pairs' (`remembered_from`)."""
    config = config or TrainConfig.from_settings(settings)
    gate = gate or Gate.from_settings(settings)
    started = time.perf_counter()
    split = split_pairs(pairs, config.seed)
    baseline = evaluate_baseline(champion, index, split)
    trained = fine_tune_cross_encoder(settings, champion, split, config, progress, show_bar)
    remembered = remembered if remembered is not None else remembered_from(pairs)
    candidate, memory = assemble_candidate(settings, champion, trained.cross, remembered, split)
    weights = choose_weights(candidate, index, split.train, weight_grid(trained))
    candidate.spec = candidate.spec.model_copy(update={"weights": weights})
    review = review_candidate(candidate, index, split, baseline, gate, pairs)
    version = registry.next_version()
    candidate.spec = candidate.spec.model_copy(update={
        "version": version, "metrics": dict(review.metrics["candidate"])})
    meta = run_metadata(version, champion, candidate, memory, pairs, split, config, gate, trained, review,
                        time.perf_counter() - started, extra_metadata)
    folder = write_version(registry, candidate, memory, meta, review.evaluations)
    candidate.folder = folder
    log.info("event=candidate_done version=%s decision=%s reason=%r", version, review.decision, review.reason)
    return CandidateResult(version=version, decision=review.decision, reason=review.reason, metadata=meta,
                           folder=folder, evaluations=review.evaluations, train_result=trained.result)


@dataclass
class TrainingData:
    """What a run learns from: the feedback and interactions it may use, the searches they were
    given on and the recent searches around them, the catalogue."""

    feedback: list[Feedback]
    inferences: dict[str, Inference]
    resources: dict[str, Resource]
    test_feedback: int  # feedback marked as test in the store, used or not
    interactions: list[Interaction] = field(default_factory=list)

    @cached_property
    def evidence(self) -> Evidence:
        return gather_evidence(self.inferences.values(), self.feedback, self.interactions)

    @cached_property
    def pairs(self) -> list[Pair]:
        return build_pairs(self.evidence, self.resources)

    @cached_property
    def memory(self) -> list[tuple[str, str, float]]:
        return memory_entries(self.evidence, self.resources)


async def read_training_data(store: Store, include_test: bool, searches: int = 20_000) -> TrainingData:
    """The actions a run may use and the newest `searches` searches (where people looked, what they
    passed over), with every older search an action was given on, and the live catalogue: evidence
    on a resource since hidden or removed makes no pair nor memory (`build_pairs` and
    `memory_entries` keep catalogue resources only), so nothing learns it."""
    everything = await store.list_feedback(include_test=True)
    feedback = [f for f in everything if include_test or not f.is_test]
    interactions = await store.list_interactions(include_test=include_test)
    inferences = {i.inference_id: i for i in await store.recent_inferences(searches) if not i.is_test}
    older = sorted({a.inference_id for a in (*feedback, *interactions)} - inferences.keys())
    inferences |= await store.get_inferences(older)
    resources = {r.id: r for r in await store.list_resources()}
    return TrainingData(feedback=feedback, inferences=inferences, resources=resources,
                        test_feedback=sum(f.is_test for f in everything), interactions=interactions)


def champion_and_index(settings: Settings, registry: Registry, data: TrainingData,
                       stored: StoredVectors | None = None) -> tuple[RankingModel, CatalogueIndex]:
    """What a run starts from: the champion (version 0 before any promotion), and the catalogue
    indexed the way it scores the pairs."""
    champion = load_champion(settings, registry)
    if champion.embedder is not None:  # the reranker's runtime, hence its stored vectors' identity
        champion.encoder = load_encoder(champion.embedder, settings.embedding_backend, onnx_cache(settings),
                                        settings.torch_threads)
    return champion, index_for_pairs(list(data.resources.values()), data.pairs, champion, stored,
                                     CatalogueSchema.from_settings(settings))


@dataclass
class CandidateResult:
    version: str
    decision: GateDecision
    reason: str
    metadata: dict[str, Any]
    folder: Path
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    train_result: TrainResult | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


def index_for_pairs(resources: list[Resource], pairs: list[Pair], model: RankingModel,
                    stored: StoredVectors | None = None,
                    schema: CatalogueSchema = DEFAULT_SCHEMA) -> CatalogueIndex:
    """BM25 over the whole catalogue (its statistics matter; each resource analysed in its language),
    embeddings only where pairs need them: read from `stored` where the reranker (or an earlier run)
    already embedded them."""
    index = CatalogueIndex(resources, schema=schema)
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


def choose_weights(candidate: RankingModel, index: CatalogueIndex, train: list[Pair],
                   grid: dict[str, tuple[float, ...]]) -> dict[str, float]:
    """The fusion weights in `grid` that surely help the training queries, the rest the candidate's.

    Every scorer runs once per query (the cross-encoder is the expensive one); each weight
    combination only re-fuses. The memory is scored leave-one-query-out: a query never recalls
    its own labels, so what is fitted is what reaches queries nobody rated (the neighbours'
    votes, the cross-encoder). The first weight of each scorer (0) is the baseline; a combination
    replaces it only where its per-query nDCG@10 gain over the baseline has a positive lower
    bound (one-sided 95 %), and the combination with the highest bound wins: a weight that helps
    some queries as much as it hurts others is not taken (bench/studies/memory.py).
    """
    names = list(grid)
    base = dict(candidate.spec.weights)
    candidate.spec = candidate.spec.model_copy(update={"weights": {
        **base, **{name: max(grid[name]) for name in names}}})
    groups = scored_groups(candidate, index, train, leave_query_out=True)
    combos: list[tuple[float, ...]] = [()]
    for name in names:
        combos = [c + (w,) for c in combos for w in grid[name]]

    def per_query(combo: tuple[float, ...]) -> np.ndarray:
        weights = {**base, **dict(zip(names, combo, strict=True))}
        return ndcg_per_query([(labels, fuse(scores, weights)) for labels, scores in groups])

    chosen = surest_gain(per_query(combos[0]), [per_query(combo) for combo in combos[1:]])
    best = combos[0] if chosen is None else combos[1 + chosen]
    return {**base, **dict(zip(names, best, strict=True))}


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


@dataclass(frozen=True)
class Split:
    train: list[Pair]
    validation: list[Pair]


def split_pairs(pairs: list[Pair], seed: int) -> Split:
    """No query on both sides, so validation measures queries the run did not learn from."""
    return Split(*split_by_query(pairs, VALIDATION_SHARE, seed))


def evaluate_baseline(champion: RankingModel, index: CatalogueIndex, split: Split) -> dict[str, Evaluation]:
    """What the candidate must beat: the champion, and first-stage BM25 alone."""
    bm25 = bm25_only(champion.spec.base_model)
    return {"champion": evaluate_split(champion, index, split.train, split.validation),
            "bm25": evaluate_split(bm25, index, split.train, split.validation)}


@dataclass
class CrossEncoderTraining:
    """The candidate's cross-encoder: fine-tuned by this run, else the champion's (None: it has none)."""

    cross: CrossEncoder | None
    result: TrainResult | None = None
    started_from: str | None = None
    skipped: str | None = None  # why this run fine-tuned none


def fine_tune_cross_encoder(settings: Settings, champion: RankingModel, split: Split, config: TrainConfig,
                            progress: Callable[[str], None] | None = None,
                            show_bar: bool = False) -> CrossEncoderTraining:
    skipped = why_no_cross_encoder(settings)
    if skipped is not None:
        return CrossEncoderTraining(cross=champion.cross, skipped=skipped)
    started_from = str(champion.folder / champion.spec.cross_encoder) if (
        champion.cross is not None and champion.folder and champion.spec.cross_encoder
    ) else settings.base_model
    torch.manual_seed(config.seed)  # a new scoring head starts random: seeded, a run can be repeated
    cross = load_cross_encoder(started_from, settings.max_length, settings.device)
    result = fine_tune(cross, split.train, split.validation, config, progress=progress, show_bar=show_bar)
    return CrossEncoderTraining(cross=cross, result=result, started_from=started_from)


def remembered_from(pairs: list[Pair]) -> list[tuple[str, str, float]]:
    """What a memory recalls when a caller has pairs and no evidence (judgments turned into pairs
    by a benchmark): each pair's value, or +1 / -1 by its label."""
    return [(p.query, p.resource_id, p.value or (1.0 if p.label else -1.0)) for p in pairs]


def assemble_candidate(settings: Settings, champion: RankingModel, cross: CrossEncoder | None,
                       remembered: list[tuple[str, str, float]],
                       split: Split) -> tuple[RankingModel, FeedbackMemory]:
    """The champion's pipeline with `cross` and a feedback memory of `remembered`: the champion's
    fusion weights, the query's own evidence weighted by `settings.memory_weight`, its neighbours'
    not yet.

    Every rated query is embedded once. The candidate recalls only the training queries, so the
    gate sees only what the training split taught; the memory returned beside it, the one saved,
    remembers every rated query (validation ones too), the way a model is refit on all its data
    once its settings are chosen.
    """
    embedder = champion.embedder or load_embedder(
        champion.spec.embedding_model or settings.embedding_model, settings.max_length, settings.device)
    spec = champion.spec.model_copy(update={
        "base_model": champion.spec.base_model, "trained_at": utcnow(),
        "embedding_model": champion.spec.embedding_model or settings.embedding_model,
        "cross_encoder": CE_FOLDER if cross is not None else None,
        "weights": {**champion.spec.weights, "memory": settings.memory_weight, "neighbours": 0.0},
    })
    memory = FeedbackMemory.build(embedder, remembered)
    candidate = RankingModel(spec=spec, embedder=embedder, cross=cross,
                             memory=memory.restricted_to({p.query for p in split.train}),
                             encoder=champion.encoder if embedder is champion.embedder else None)
    return candidate, memory


def weight_grid(trained: CrossEncoderTraining) -> dict[str, tuple[float, ...]]:
    """The weights tried per learned scorer: the neighbours' always, the cross-encoder's when this run
    trained one."""
    grid = {"neighbours": NEIGHBOUR_WEIGHTS}
    if trained.result is not None:
        grid["cross"] = CROSS_WEIGHTS
    return grid


@dataclass
class Review:
    evaluations: dict[str, Evaluation]  # champion, bm25, candidate
    decision: GateDecision
    reason: str

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return {name: ev.metrics for name, ev in self.evaluations.items()}


def review_candidate(candidate: RankingModel, index: CatalogueIndex, split: Split,
                     baseline: dict[str, Evaluation], gate: Gate, pairs: list[Pair]) -> Review:
    """The candidate evaluated beside the baseline, and what the gate makes of it.

    Its cross-encoder is scored even at weight 0: the notebook checks the saved one against it.
    The gate also checks the labels against the order people saw the results in
    (`auc_shown_order`, kept with the champion's metrics; `evaluate.shown_order_auc`).
    """
    evaluations = {**baseline, "candidate": evaluate_split(candidate, index, split.train, split.validation,
                                                           with_cross=True)}
    if not split.validation:
        return Review(evaluations, "rejected",
                      "no validation queries: feedback covers too few distinct queries")
    order = shown_order_auc(pairs)
    prior_auc = None
    if order is not None:
        evaluations["champion"].metrics["auc_shown_order"], prior_auc = order
        evaluations["champion"].metrics["auc_shown_order_high"] = prior_auc
    metrics = {name: ev.metrics for name, ev in evaluations.items()}
    decision, reason = gate.review(metrics["candidate"], metrics["champion"], metrics["bm25"], prior_auc)
    return Review(evaluations, decision, reason)


def run_metadata(version: str, champion: RankingModel, candidate: RankingModel, memory: FeedbackMemory,
                 pairs: list[Pair], split: Split, config: TrainConfig, gate: Gate,
                 trained: CrossEncoderTraining, review: Review, seconds: float,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`training_metadata.json`: what the run read, did and decided, and with which code."""
    train, val, result = split.train, split.validation, trained.result
    meta = {
        "version": version,
        "decision": review.decision,
        "reason": review.reason,
        "champion_version": champion.version,
        "weights": candidate.spec.weights,
        "champion_weights": champion.spec.weights,
        "dataset": {"pairs": len(pairs), "train": len(train), "validation": len(val),
                    "train_queries": sorted({p.query for p in train}),
                    "validation_queries": sorted({p.query for p in val}),
                    "likes": sum(p.label for p in pairs),
                    "split": {"by": "query", "stratified_by": "label", "validation_share": VALIDATION_SHARE,
                              "seed": config.seed, "train_likes": sum(p.label for p in train),
                              "validation_likes": sum(p.label for p in val)}},
        "hyperparameters": result.config if result else {},
        "cross_encoder_trained": result is not None,
        "cross_encoder_skipped": trained.skipped,
        "metrics": review.metrics,
        "gate": {"metric": gate.metric, "margin": gate.margin, "online": gate.online,
                 "safety_margin": gate.safety_margin},
        "durations": {"train_s": result.seconds if result else 0.0, "total_s": seconds},
        "loss_history": result.loss_history if result else [],
        "started_from": trained.started_from,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__},
        "created_at": utcnow().isoformat(),
        **(extra or {}),
    }
    votes = [label for labels in memory.labels for label in labels.values()]
    meta["memory_queries"] = len(memory.queries)
    meta["memory"] = {"queries": len(memory.queries),
                      "resources": len({r for labels in memory.labels for r in labels}),
                      "likes": votes.count(1), "dislikes": votes.count(-1)}
    return meta


def write_version(registry: Registry, candidate: RankingModel, memory: FeedbackMemory, meta: dict[str, Any],
                  evaluations: dict[str, Evaluation]) -> Path:
    """The version folder, written aside and renamed into place; the champion pointer does not move."""

    def write(folder: Path) -> None:
        if candidate.cross is not None:
            candidate.cross.save_pretrained(str(folder))
        memory.save(folder)
        candidate.spec.save(folder)
        (folder / "training_metadata.json").write_text(json.dumps(meta, indent=2, default=float))
        (folder / "training_report.txt").write_text(text_report(meta))
        (folder / "report.html").write_text(html_report(meta, meta["loss_history"], evaluations))

    return registry.write_version(meta["version"], write)


def summarise(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flat metrics for events and the store: candidate_*, champion_*, bm25_*."""
    return {f"{model}_{name}": float(value) for model, values in metrics.items()
            for name, value in values.items() if isinstance(value, int | float) and not np.isnan(value)}
