"""Training reports say what a run learned, and draw only the plots that have something to show."""

from __future__ import annotations

import numpy as np

from shared.ml.training.evaluate import Evaluation
from shared.ml.training.report import html_report, learned, text_report
from shared.ml.training.run import why_no_cross_encoder
from shared.settings import OFFLINE_BASE_MODEL, Settings

METRICS = {"ndcg@10": 0.61, "mrr@10": 0.7, "accuracy": 0.6, "precision": 0.55, "recall": 0.5, "f1": 0.52,
           "auc": 0.64}


def meta(**changes: object) -> dict:
    """A run's metadata as `train_candidate` writes it; by default one that fine-tuned nothing."""
    base = {
        "version": "v0002", "decision": "rejected", "reason": "ndcg@10 0.6100 is not above the champion's",
        "champion_version": "v0001", "weights": {"bm25": 1.0, "dense": 0.5, "memory": 0.25},
        "champion_weights": {"bm25": 1.0, "dense": 0.5},
        "dataset": {"pairs": 120, "train": 96, "validation": 24},
        "metrics": {"champion": METRICS, "candidate": dict(METRICS), "bm25": {"ndcg@10": 0.5}},
        "durations": {"train_s": 0.0}, "loss_history": [], "hyperparameters": {},
        "cross_encoder_trained": False,
        "cross_encoder_skipped": why_no_cross_encoder(Settings(base_model=OFFLINE_BASE_MODEL)),
        "memory": {"queries": 30, "resources": 85, "likes": 60, "dislikes": 60}, "started_from": None,
    }
    return {**base, **changes}


def evaluations() -> dict[str, Evaluation]:
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.2, 0.7, 0.4, 0.3, 0.6])
    ev = Evaluation(METRICS, labels, scores, confusion=[[2, 1], [1, 2]])
    return {"champion": ev, "bm25": ev, "candidate": ev}


def test_a_run_that_fine_tuned_nothing_says_what_it_learned_and_draws_no_empty_plot() -> None:
    run = meta()
    lines = learned(run)
    assert lines[0].startswith(
        "feedback memory: 30 queries and 85 resources users rated (60 likes, 60 dislikes)")
    # A version written before the memory had two scorers: its neighbours weigh what its own ratings do.
    assert "the same query comes again (weight 0.25) and for similar queries (weight 0.25)" in lines[0]
    assert "fusion weights: bm25 1, dense 0.5, memory 0.25 (new)" in lines[1]
    run["weights"] = {**run["weights"], "memory": 4.0, "neighbours": 0.0}
    assert "(weight 4) and not for other queries" in learned(run)[0]
    assert learned(run)[3].endswith("applies to the queries users rated)")
    assert lines[2].startswith(
        "cross-encoder: not fine-tuned in this run: EDURANKER_TRAIN_CROSS_ENCODER=auto")
    assert "no validation metric moved" in lines[3]

    text = text_report(run)
    assert "What this run learned:" in text and "- feedback memory: 30 queries" in text
    assert "+0.0%" not in text and "champion = candidate" in text and "0.6100" in text

    html = html_report(run, run["loss_history"], evaluations())
    assert "<figcaption>Loss curve" not in html and "<figcaption>Before / after" not in html
    assert "<th>gain</th>" not in html and "+0.0%" not in html
    assert "<figcaption>ROC" in html and "<figcaption>Score distributions" in html
    assert "<li>feedback memory: 30 queries and 85 resources" in html


def test_a_run_that_fine_tuned_draws_its_loss_and_its_gains() -> None:
    after = {**METRICS, "ndcg@10": 0.66}
    history = [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6, "eval_loss": 0.65}]
    run = meta(cross_encoder_trained=True, cross_encoder_skipped=None, loss_history=history,
               weights={"bm25": 1.0, "dense": 0.5, "memory": 0.25, "cross": 0.0},
               hyperparameters={"epochs": 1}, durations={"train_s": 12.0}, started_from="base",
               metrics={"champion": METRICS, "candidate": after, "bm25": {"ndcg@10": 0.5}})
    lines = learned(run)
    assert lines[2].startswith(
        "cross-encoder: fine-tuned from base (1 epoch(s), 12 s), fused at weight 0: on the training")
    assert not any("no validation metric moved" in line for line in lines)
    assert "+8.2%" in text_report(run)
    html = html_report(run, history, evaluations())
    assert "<figcaption>Loss curve" in html and "<figcaption>Before / after" in html
    assert "<th>gain</th>" in html


def test_only_the_offline_weights_skip_the_cross_encoder_under_auto() -> None:
    assert why_no_cross_encoder(Settings(base_model="cross-encoder/ms-marco-MiniLM-L-6-v2")) is None
    assert why_no_cross_encoder(Settings(base_model=OFFLINE_BASE_MODEL, train_cross_encoder="on")) is None
    assert why_no_cross_encoder(Settings(train_cross_encoder="off")) == "EDURANKER_TRAIN_CROSS_ENCODER=off"
    assert "`on` trains one anyway" in (why_no_cross_encoder(Settings(base_model=OFFLINE_BASE_MODEL)) or "")
