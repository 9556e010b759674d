"""The search page's status views: pure reshaping of the aggregator's stats and the training runs."""

from __future__ import annotations

from pathlib import Path

from services.reranker.routes.page import progress_view, run_view
from shared.ml.registry import Registry


def test_progress_shows_new_feedback_against_the_threshold_and_the_balance() -> None:
    stats = {"counts": {"total": 8, "like": 6, "dislike": 2, "new_since_training": 5, "new_like": 4,
                        "new_dislike": 1},
             "policy": {"min_new": 40, "min_total": 10, "max_imbalance": 0.95,
                        "blocked_by": "a training request is waiting for the trainer"},
             "pending_request": True}
    view = progress_view(stats)
    assert view["new_feedback"] == 5
    assert view["threshold"] == 40
    assert view["like_ratio"] == 0.75
    assert view["training_requested"] is True
    assert view["blocked_by"] == "a training request is waiting for the trainer"
    assert progress_view({"counts": {}, "policy": {"min_new": 3}})["like_ratio"] is None


def test_a_run_links_its_report_only_when_the_registry_has_it(tmp_path: Path) -> None:
    registry = Registry(tmp_path).ensure()
    (tmp_path / "v0001").mkdir()
    (tmp_path / "v0001" / "report.html").write_text("<html></html>")
    (tmp_path / "v0002").mkdir()
    run = {"run_id": "r1", "status": "promoted", "version": "v0001", "pairs": 12,
           "metrics": {"candidate_ndcg@10": 0.5, "champion_ndcg@10": 0.4, "candidate_loss": 0.3}}
    view = run_view(run, registry)
    assert view["report_url"] == "reports/v0001"
    assert view["metrics"] == {"candidate_ndcg@10": 0.5, "champion_ndcg@10": 0.4}
    assert run_view({**run, "version": "v0002"}, registry)["report_url"] is None
    assert run_view({**run, "version": "../v0001"}, registry)["report_url"] is None
    assert run_view({"run_id": "r2", "status": "skipped", "version": None}, registry)["report_url"] is None
