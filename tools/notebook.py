"""What the fine-tuning notebook shows beyond a training run: data checks, tables, figures.

The notebook's cells call this module and the trainer's own steps (`shared.ml.training`: `dataset`,
`run`, `train`, `evaluate`, `report`; `shared.ml.registry`), so what a person explores there is
exactly what the trainer does; nothing here trains or scores in a way of its own, and the
champion moves only through the trainer's lifecycle (`services/trainer/lifecycle.py`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sentence_transformers import CrossEncoder

from services.trainer.lifecycle import move_champion
from shared.ml.ranking.pipeline import PipelineSpec, RankingModel
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.registry import Registry
from shared.ml.runtime.loading import cross_scores
from shared.ml.training.dataset import Pair, group_by_query
from shared.ml.training.evaluate import Evaluation
from shared.ml.training.gate import Gate, promotes_online
from shared.ml.training.hyperparameters import TrainConfig
from shared.ml.training.report import COMPARED, gains
from shared.ml.training.run import CandidateResult, TrainingData, read_training_data, summarise
from shared.records import Feedback, ModelVersion, normalise_query
from shared.settings import Settings, from_settings
from shared.store import Store
from shared.vocab import GateDecision

GENERATE_HINT = "python -m tools.sample_feedback --count 200"


def what_to_do(reason: str, minimum: int, store_url: str) -> str:
    """The "not enough feedback" message: why, and the three ways to get more."""
    return (
        f"Cannot fine-tune yet: {reason}.\n"
        f"The notebook needs at least {minimum} labelled (query, resource) pairs with both labels "
        "(the guide recommends 50-100 for a first useful run, 200-500 for good results).\n"
        "To get more:\n"
        "  1. collect real feedback: `make run`, search, and like/dislike results "
        "(POST /api/feedback);\n"
        "  2. play test traffic through the running API: `python -m tools.cli traffic --count 200`;\n"
        f"  3. or write test feedback straight into the store: `{GENERATE_HINT}`\n"
        f"     (it writes to EDURANKER_STORE_URL, else var/eduranker.db; this notebook reads {store_url}).\n"
        "Then run the notebook again from the top. The cells below are skipped."
    )


def skipped(reason: str) -> str:
    """The one line a skipped cell prints; section 3 has the whole message."""
    return f"Skipped: {reason}. Get more feedback (e.g. `{GENERATE_HINT}`) and run all cells again."


@dataclass
class NotebookGate(Gate):
    """The trainer's gate plus the person's choice: with `promote` False the version is only kept.

    `verdict` is what the trainer's gate said (promoted, challenger or rejected), whatever
    `promote` made of it."""

    promote: bool = False
    verdict: tuple[GateDecision, str] | None = field(default=None, init=False)

    @classmethod
    def for_notebook(cls, settings: Settings, promote: bool) -> NotebookGate:
        """The gate the trainer would use with these settings (online or offline promotion)."""
        return from_settings(cls, settings, online=promotes_online(settings), promote=promote)

    def review(self, candidate: dict[str, float], champion: dict[str, float],
               bm25: dict[str, float], prior_auc: float | None = None) -> tuple[GateDecision, str]:
        decision, reason = super().review(candidate, champion, bm25, prior_auc)
        self.verdict = (decision, reason)
        if decision != "rejected" and not self.promote:
            would = "the champion" if decision == "promoted" else "the challenger users compare"
            return "rejected", (f"kept for review (PROMOTE is False); the trainer's gate would make it "
                                f"{would}: {reason}")
        return decision, reason


# Loading
@dataclass
class StoreData(TrainingData):
    """What the trainer reads (`read_training_data`), plus the searches logged per model version."""

    inference_counts: dict[str, int] = field(default_factory=dict)


async def load_store_data(store: Store, include_test: bool = False) -> StoreData:
    """What the trainer reads from the store, plus the counts the guide's section 2 shows."""
    data = await read_training_data(store, include_test)
    return StoreData(feedback=data.feedback, inferences=data.inferences, resources=data.resources,
                     test_feedback=data.test_feedback, interactions=data.interactions,
                     inference_counts=await store.count_inferences())


def inference_stats(data: StoreData) -> pd.DataFrame:
    """Per model version: searches logged, feedback given, likes and dislikes."""
    labels: dict[str, Counter[str]] = defaultdict(Counter)
    for f in data.feedback:
        labels[f.model_version][f.label] += 1
    versions = sorted(set(data.inference_counts) | set(labels))
    rows = [{"model_version": v, "inferences": data.inference_counts.get(v, 0),
             "feedback": sum(labels[v].values()), "like": labels[v]["like"],
             "dislike": labels[v]["dislike"]} for v in versions]
    return pd.DataFrame(rows, columns=["model_version", "inferences", "feedback", "like", "dislike"])


def feedback_distribution(data: StoreData) -> pd.DataFrame:
    counts = Counter(f.label for f in data.feedback)
    total = max(1, len(data.feedback))
    return pd.DataFrame([{"label": label, "count": counts[label], "share": counts[label] / total}
                         for label in ("like", "dislike")]).set_index("label")


def quality_checks(data: StoreData, minimum: int) -> pd.DataFrame:
    """The guide's data requirements, checked: size, orphans, balance, variety, disagreements."""
    orphans = sum(f.inference_id not in data.inferences for f in data.feedback)
    unknown = sum(f.resource_id not in data.resources for f in data.feedback)
    likes = sum(f.label == "like" for f in data.feedback)
    share = likes / len(data.feedback) if data.feedback else 0.0
    labels: dict[tuple[str, str], set[str]] = defaultdict(set)
    for f in data.feedback:
        if f.inference_id in data.inferences:
            labels[(normalise_query(data.inferences[f.inference_id].query), f.resource_id)].add(f.label)
    queries = {q for q, _ in labels}
    conflicts = sum(len(v) > 1 for v in labels.values())
    rows = [
        ("feedback records", len(data.feedback), len(data.feedback) >= minimum,
         f"at least {minimum}; 50-100 for a first useful run, 200-500 for good results"),
        ("feedback without a logged inference", orphans, orphans == 0,
         "ignored: a pair needs the query that was searched"),
        ("feedback on resources not in the catalogue", unknown, unknown == 0,
         "ignored: load the catalogue those resources came from"),
        ("test feedback (not trained on)", data.test_feedback, True,
         "set INCLUDE_TEST_FEEDBACK = True to train on it too"),
        ("like share", f"{share:.0%}", 0.2 <= share <= 0.8,
         "the guide recommends about 50% like / 50% dislike"),
        ("distinct queries", len(queries), len(queries) >= 5,
         "the 80/20 split is by query: with fewer than 5 there is little to validate on"),
        ("(query, resource) pairs with disagreeing users", conflicts, True,
         "resolved by majority, a tie by the latest label"),
    ]
    return pd.DataFrame([{"check": c, "value": v, "status": "ok" if ok else "warning", "advice": a}
                         for c, v, ok, a in rows])


# Preparation and visualisation
def pairs_frame(pairs: list[Pair]) -> pd.DataFrame:
    return pd.DataFrame([{"query": p.query, "resource_id": p.resource_id, "label": p.label,
                          "feedback": "like" if p.label else "dislike", "votes": p.votes,
                          "query_words": len(p.query.split()), "text_words": len(p.text.split()),
                          "text": p.text} for p in pairs],
                        columns=["query", "resource_id", "label", "feedback", "votes", "query_words",
                                 "text_words", "text"])


def label_figure(pairs: list[Pair]) -> Figure:
    counts = Counter("like" if p.label else "dislike" for p in pairs)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    names = ["like", "dislike"]
    bars = ax.bar(names, [counts[n] for n in names], color=["tab:green", "tab:red"])
    for bar, name in zip(bars, names, strict=True):
        share = counts[name] / max(1, len(pairs))
        ax.annotate(f"{counts[name]} ({share:.0%})", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom")
    ax.margins(y=0.15)
    ax.set_title("Label distribution (pairs)")
    fig.tight_layout()
    return fig


def length_figure(pairs: list[Pair]) -> Figure:
    queries = {normalise_query(p.query): p.query for p in pairs}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist([len(q.split()) for q in queries.values()], bins=range(1, 12), color="tab:blue")
    axes[0].set_title("Query length (words, distinct queries)")
    axes[1].hist([len(p.text.split()) for p in pairs], bins=20, color="tab:purple")
    axes[1].set_title("Resource text length (words, pairs)")
    fig.tight_layout()
    return fig


def exploration_figure(pairs: list[Pair], feedback: list[Feedback], top: int = 15) -> Figure:
    """Which queries the pairs come from, and how the rank a result was shown at relates to likes."""
    grouped = sorted(group_by_query(pairs).values(), key=len, reverse=True)[:top]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.3 * len(grouped) + 2.5))
    names = [g[0].query[:40] for g in grouped][::-1]
    likes = [sum(p.label for p in g) for g in grouped][::-1]
    dislikes = [len(g) - sum(p.label for p in g) for g in grouped][::-1]
    axes[0].barh(names, likes, color="tab:green", label="like")
    axes[0].barh(names, dislikes, left=likes, color="tab:red", label="dislike")
    axes[0].set_title(f"Pairs per query (top {len(grouped)})")
    axes[0].legend(fontsize=8)
    by_rank: dict[int, Counter[str]] = defaultdict(Counter)
    for f in feedback:
        by_rank[f.rank][f.label] += 1
    ranks = sorted(by_rank)
    axes[1].bar(ranks, [by_rank[r]["like"] / sum(by_rank[r].values()) for r in ranks], color="tab:green")
    axes[1].set_xlabel("rank shown")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("Like share by rank shown")
    fig.tight_layout()
    return fig


# Split, model, plan
def split_summary(train: list[Pair], val: list[Pair]) -> pd.DataFrame:
    rows = []
    for name, part in (("train", train), ("validation", val)):
        likes = sum(p.label for p in part)
        rows.append({"split": name, "pairs": len(part), "queries": len(group_by_query(part)),
                     "like": likes, "dislike": len(part) - likes,
                     "like_share": likes / len(part) if part else 0.0})
    return pd.DataFrame(rows).set_index("split")


def examples(pairs: list[Pair], n: int = 5, width: int = 90) -> pd.DataFrame:
    """The first `n` pairs as the trainer sees them: (query, text) with a 0/1 label."""
    return pd.DataFrame([{"query": p.query, "text": p.text[:width], "label": p.label} for p in pairs[:n]])


def training_plan(config: TrainConfig, n_train: int) -> pd.Series:
    """The guide's plan: what `fine_tune` will run, after the size-based advice when `auto` is on."""
    used = config.for_data_size(n_train)
    steps_per_epoch = math.ceil(n_train / used.batch_size) if n_train else 0
    total = steps_per_epoch * used.epochs
    return pd.Series({
        "training pairs": n_train, "epochs": used.epochs, "batch size": used.batch_size,
        "learning rate": used.learning_rate, "batches per epoch": steps_per_epoch, "total steps": total,
        "warmup ratio": used.warmup_ratio, "warmup steps": math.ceil(total * used.warmup_ratio),
        "early stopping patience (epochs)": used.early_stopping_patience, "seed": used.seed,
        "size-based advice applied": used.auto,
    })


def model_summary(model: CrossEncoder, source: str) -> pd.Series:
    parameters = sum(p.numel() for p in model.model.parameters())
    trainable = sum(p.numel() for p in model.model.parameters() if p.requires_grad)
    return pd.Series({
        "source": source, "architecture": type(model.model).__name__, "device": str(model.device),
        "GPU available": torch.cuda.is_available(),
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
        "parameters": f"{parameters:,}", "trainable": f"{trainable:,}", "max length": model.max_length,
    })


# Evaluation
def cross_only(model: CrossEncoder, name: str) -> RankingModel:
    """A cross-encoder on its own, as the guide evaluates it, wrapped as a one-scorer pipeline."""
    return RankingModel(spec=PipelineSpec(version=name, base_model=name, cross_encoder=".",
                                          weights={"cross": 1.0}), cross=model)


def metrics_table(evaluations: dict[str, Evaluation]) -> pd.DataFrame:
    return pd.DataFrame({name: {m: ev.metrics.get(m, float("nan")) for m in (*COMPARED, "threshold")}
                         for name, ev in evaluations.items()}).T


def metrics_figure(evaluations: dict[str, Evaluation],
                   names: tuple[str, ...] = ("ndcg@10", "accuracy", "f1", "auc")) -> Figure:
    """Grouped bars: every evaluated model on the metrics the guide and the gate look at."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(1, len(evaluations))
    x = np.arange(len(names))
    for i, (model, ev) in enumerate(evaluations.items()):
        ax.bar(x + (i - (len(evaluations) - 1) / 2) * width, [ev.metrics.get(n, 0.0) for n in names],
               width, label=model)
    ax.set_xticks(x, list(names))
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Validation metrics per model")
    fig.tight_layout()
    return fig


def gains_table(before: Evaluation, after: Evaluation) -> pd.DataFrame:
    """Before/after with the gain in percent, the guide's comparison table."""
    frame = pd.DataFrame(gains(before.metrics, after.metrics)).set_index("metric")
    frame["gain %"] = [("n/a" if g is None or pd.isna(g) else f"{g:+.1f}%") for g in frame.pop("gain_pct")]
    return frame


def score_difference(saved: Evaluation, trained: Evaluation) -> float:
    """Largest gap between the reloaded version and the model as training left it (0: identical).

    Compared scorer by scorer on the raw scores, as |a - b| / (1 + |b|): relative for large
    scores, absolute for small ones. Not on the fused score, whose per-query z-scoring divides
    by the spread of each scorer: a barely trained cross-encoder's logits spread by 1e-5, which
    turns float32 rounding (1e-9) into gaps of 1e-4. A model left in bfloat16 autocast differs
    by 1e-3 or more. Other scorers, or other queries, are a difference of their own (inf).
    The cross-encoder is compared even when fusion gives it weight 0 (evaluated `with_cross`).
    """
    if len(saved.scorers) != len(trained.scorers):
        return float("inf")
    gap = 0.0
    for ours, theirs in zip(saved.scorers, trained.scorers, strict=True):
        if ours.keys() != theirs.keys():
            return float("inf")
        for name in ours.keys() - {"fused"}:
            a, b = np.asarray(ours[name], dtype=float), np.asarray(theirs[name], dtype=float)
            if a.shape != b.shape:
                return float("inf")
            if a.size:
                gap = max(gap, float((np.abs(a - b) / (1.0 + np.abs(b))).max()))
    return gap


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def example_predictions(index: CatalogueIndex, pairs: list[Pair], models: dict[str, RankingModel],
                        cross: CrossEncoder | None, queries: int = 3) -> pd.DataFrame:
    """Labelled results per query: each pipeline's score and the cross-encoder's like probability
    (none without a cross-encoder)."""
    rows = []
    for group in list(group_by_query(pairs).values())[:queries]:
        known = [p for p in group if p.resource_id in index.position]
        if not known:
            continue
        positions = np.array([index.position[p.resource_id] for p in known])
        scores = {name: model.score(index, known[0].query, positions)["fused"]
                  for name, model in models.items()}
        probability = (sigmoid(cross_scores(cross, known[0].query, [p.text for p in known]))
                       if cross is not None else None)
        for i, p in enumerate(known):
            liked = {} if probability is None else {"like probability": round(float(probability[i]), 3)}
            rows.append({"query": p.query, "resource": index.resources[positions[i]].title,
                         "actual": "like" if p.label else "dislike",
                         **{name: round(float(s[i]), 3) for name, s in scores.items()}, **liked})
    frame = pd.DataFrame(rows)
    if rows:
        frame = frame.sort_values(["query", list(models)[-1]], ascending=[True, False])
    return frame.reset_index(drop=True)


def try_query(cross: CrossEncoder, index: CatalogueIndex, query: str, top_k: int = 5,
              candidates: int = 20) -> pd.DataFrame:
    """Any query: BM25's first stage, reranked by the cross-encoder alone."""
    positions, bm25 = index.bm25_top(query, candidates)
    if positions.size == 0:
        return pd.DataFrame(columns=["rank", "title", "bm25", "logit", "like probability"])
    logits = cross_scores(cross, query, [index.resources[p].text for p in positions])
    order = np.argsort(-logits, kind="stable")[:top_k]
    return pd.DataFrame([{"rank": r + 1, "title": index.resources[positions[i]].title,
                          "bm25": round(float(bm25[i]), 2), "logit": round(float(logits[i]), 3),
                          "like probability": round(float(sigmoid(logits[i])), 3)}
                         for r, i in enumerate(order)])


# Save
async def record_version(store: Store, registry: Registry, result: CandidateResult,
                         base_model: str) -> ModelVersion:
    """The store's index of registry versions, as the trainer keeps it; then, when the gate promoted
    the version, the champion pointer (index first, as the trainer's lifecycle does).

    No training run is recorded: runs drive the aggregator's "since last training" counts, and a
    notebook experiment should not reset the automatic policy.
    """
    version = ModelVersion(version=result.version, location=result.version,
                           status="promoted" if result.promoted else "rejected", base_model=base_model,
                           metrics=summarise(result.metadata["metrics"]))
    await store.save_model_version(version)
    if result.promoted:
        move_champion(registry, result.version)
    return version


def version_files(folder: Path) -> pd.DataFrame:
    return pd.DataFrame([{"file": p.name, "kB": round(p.stat().st_size / 1024, 1)}
                         for p in sorted(folder.iterdir()) if p.is_file()])


def next_steps(result: CandidateResult, registry: Registry, gate: NotebookGate) -> str:
    """How the reranker gets this version; a version the gate refused is only offered for a pinned trial."""
    champion = registry.champion()
    verdict = gate.verdict[0] if gate.verdict else "rejected"
    lines = [f"Version {result.version}: {result.metadata['decision']} ({result.reason})",
             f"Folder: {result.folder}", f"Champion now: {champion or 'none (version 0 is served)'}"]
    if champion == result.version:
        lines.append("A running reranker watches the registry's `current` pointer and loads it within "
                     "seconds; check GET /api/reranking/info-modele.")
    elif verdict == "challenger":
        lines += ["It passed the safety checks, so users may compare it with the champion: with the stack",
                  "running, start that online experiment (docs/online.md) with",
                  f"  python -m services.trainer.cli challenge {result.version}",
                  "Their likes and dislikes then promote or retire it."]
    elif verdict == "promoted":
        lines += ["It passed the gate. To serve it: set PROMOTE = True and run again, or promote it now with",
                  f"  python -m services.trainer.cli promote {result.version}",
                  "(a running reranker follows the champion)."]
    else:
        lines += ["The gate kept the champion, so the served ranking does not get worse. To try this version",
                  f"anyway, pin a reranker to it: CROSS_ENCODER_PATH={result.folder} make run"]
    return "\n".join(lines)
