"""The notebook's library parts that need no store, kernel or model: gate choice, plan, checks, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.ml.training.hyperparameters import TrainConfig
from shared.records import Feedback, Inference, Resource, ShownResult
from shared.settings import Settings
from tests.conftest import ROOT
from tools.local_settings import LOCAL_WORKDIR, local_settings
from tools.notebook import NotebookGate, StoreData, quality_checks, training_plan

PASSES = ({"ndcg@10": 0.9}, {"ndcg@10": 0.8}, {"ndcg@10": 0.7})
FAILS = ({"ndcg@10": 0.6}, {"ndcg@10": 0.8}, {"ndcg@10": 0.7})


def test_notebook_gate_promotes_only_when_asked_and_the_gate_passes() -> None:
    offline = Settings(promotion="offline", gate_margin=0.0)
    kept = NotebookGate.for_notebook(offline, promote=False)
    decision, reason = kept.review(*PASSES)
    assert decision == "rejected" and "PROMOTE is False" in reason and "the champion" in reason
    assert kept.verdict is not None and kept.verdict[0] == "promoted"

    assert NotebookGate.for_notebook(offline, promote=True).review(*PASSES)[0] == "promoted"

    refused = NotebookGate.for_notebook(offline, promote=True)
    decision, reason = refused.review(*FAILS)
    assert decision == "rejected" and "below the champion" in reason


def test_notebook_gate_follows_online_promotion_like_the_trainer() -> None:
    online = Settings(promotion="online")
    assert NotebookGate.for_notebook(online, promote=True).review(*FAILS)[0] == "challenger"
    kept = NotebookGate.for_notebook(online, promote=False)
    decision, reason = kept.review(*FAILS)
    assert decision == "rejected" and "PROMOTE is False" in reason and "challenger" in reason
    assert kept.verdict is not None and kept.verdict[0] == "challenger"


def test_training_plan_counts_batches_and_warmup_and_applies_the_guides_advice() -> None:
    plan = training_plan(TrainConfig(epochs=2, batch_size=16, warmup_ratio=0.1), 50)
    assert plan["batches per epoch"] == 4 and plan["total steps"] == 8 and plan["warmup steps"] == 1
    auto = training_plan(TrainConfig(epochs=9, learning_rate=1e-5, auto=True), 50)
    assert auto["epochs"] == 3 and auto["learning rate"] == 5e-5


def test_quality_checks_flag_orphans_imbalance_and_disagreements() -> None:
    resource = Resource(id="r1", title="Linear algebra")
    shown = [ShownResult(resource_id="r1", rank=1, first_stage_score=1.0)]
    inferences = {i: Inference(inference_id=i, query="Linear  Algebra", model_version="v0", use_reranker=True,
                               results=shown, latency_ms=1.0) for i in ("a", "b")}
    feedback = [Feedback(feedback_id=f"f{i}", inference_id=inf, resource_id="r1", label=label, rank=1,
                         model_version="v0")
                for i, (inf, label) in enumerate([("a", "like"), ("b", "dislike"), ("zzz", "dislike")])]
    data = StoreData(feedback=feedback, inferences=inferences, resources={"r1": resource},
                     inference_counts={"v0": 2}, test_feedback=0)
    checks = quality_checks(data, minimum=10).set_index("check")
    assert checks.loc["feedback records", "status"] == "warning"
    assert checks.loc["feedback without a logged inference", "value"] == 1
    assert checks.loc["(query, resource) pairs with disagreeing users", "value"] == 1
    assert checks.loc["distinct queries", "value"] == 1
    assert checks.loc["like share", "status"] == "ok"


def test_local_settings_default_to_make_runs_store_and_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDURANKER_BASE_MODEL", "some/model")  # no hub probe
    monkeypatch.delenv("EDURANKER_MODEL_DIR", raising=False)
    monkeypatch.delenv("EDURANKER_STORE_URL", raising=False)
    settings = local_settings()
    assert settings.model_dir == LOCAL_WORKDIR / "models" / "cross_encoder"
    assert settings.store_url == f"sqlite:///{ROOT / 'var' / 'eduranker.db'}"
    assert settings.base_model == "some/model"

    monkeypatch.setenv("EDURANKER_MODEL_DIR", "elsewhere/models")
    monkeypatch.setenv("EDURANKER_STORE_URL", "sqlite:////tmp/x.db")
    settings = local_settings()
    assert settings.model_dir == ROOT / "elsewhere" / "models"
    assert settings.store_url == "sqlite:////tmp/x.db"
    assert Path(settings.store_url.removeprefix("sqlite:///")).is_absolute()
