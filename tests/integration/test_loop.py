"""The whole learning loop as real processes: broker, four services, HTTP, Kafka, retraining; on each
store backend (SQLite, and MongoDB: SecantusDB, tests/mongodb.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.store import open_store
from tests.conftest import tiny_stack
from tests.integration.test_deploy import (
    DASHBOARD,
    SUFFIXES,
    alert_rules,
    dashboard_exprs,
    grafana_to_promql,
    metric_names,
)
from tests.mongodb import database_url
from tools.localstack import LocalStack, wait_for

QUERIES = [
    "machine learning tutorial",
    "linear algebra for beginners",
    "python for data analysis",
    "introduction to neural networks",
    "SQL joins explained",
    "calculus derivatives exercises",
]


@pytest.fixture(scope="module", params=["sqlite", "mongodb"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          tiny_model: Path) -> Iterator[LocalStack]:
    # The gate is exercised by the trainer tests; here any candidate must get through (margin 1,
    # no check of the labels against BM25), promoted offline so the reranker reloads it at once;
    # a challenger users decide on is tests/integration/test_online.py.
    store = {}
    if request.param == "mongodb":
        store["store_url"] = database_url(request.getfixturevalue("mongodb"))
    with tiny_stack(tmp_path_factory.mktemp(f"loop-{request.param}"), tiny_model, promotion="offline",
                    train_min_new_feedback=90,
                    gate_margin=1.0, gate_min_prior_auc=0.0, num_epochs=2, **store) as running:
        yield running


def search(stack: LocalStack, query: str, **extra: object) -> dict:
    response = httpx.post(f"{stack.url('reranker')}/api/reranking/search-with-reranking",
                          json={"query_text": query, "use_reranker": True, "top_k": 10, **extra}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def rate_top_results(stack: LocalStack, given: dict[str, dict[str, float]] | None = None) -> int:
    """Two people like and dislike the first 8 results of each query, both labels on every query:
    96 feedback, past the threshold these tests train at (90), and each result judged by two voices
    (what one person alone says is not remembered). `given`: query → resource → 1 (like)."""
    sent = 0
    for person, query in ((p, q) for p in ("ana", "ben") for q in QUERIES):
        body = search(stack, query)
        for result in body["results"][:8]:
            label = "like" if query.split()[0].lower() in result["title"].lower() else "dislike"
            if result["rank"] in (1, 8):  # make sure both labels occur for every query
                label = "like" if result["rank"] == 1 else "dislike"
            response = httpx.post(f"{stack.url('collector')}/api/feedback", json={
                "inference_id": body["inference_id"], "resource_id": result["resource_id"], "feedback": label,
                "user_id": person,
            })
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "created"
            if given is not None:
                given.setdefault(query, {})[result["resource_id"]] = float(label == "like")
            sent += 1
    return sent


def memory_separates(stack: LocalStack, given: dict[str, dict[str, float]]) -> list[str]:
    """The rated queries whose served results do not score liked above disliked in the feedback
    memory (what the version learned from its users, whatever weight fusion gives it); a disliked
    result pushed out of the top 20 counts as below."""
    wrong = []
    for query, gains in given.items():
        memory = {r["resource_id"]: r["scores"]["memory"] for r in search(stack, query, top_k=20)["results"]}
        liked = [memory[i] for i, g in gains.items() if g and i in memory]
        disliked = [memory[i] for i, g in gains.items() if not g and i in memory]
        if not liked or (disliked and min(liked) <= max(disliked)):
            wrong.append(f"{query}: liked {liked}, disliked {disliked}")
    return wrong


def inference_stored(stack: LocalStack, inference_id: str) -> bool:
    async def lookup() -> bool:
        store = await open_store(stack.settings.store_url)
        try:
            return await store.get_inference(inference_id) is not None
        finally:
            await store.close()

    return asyncio.run(lookup())


def stats(stack: LocalStack) -> dict:
    return httpx.get(f"{stack.url('collector')}/api/feedback/stats", timeout=10).json()


def test_feedback_retrains_and_the_reranker_reloads(stack: LocalStack) -> None:
    reranker = stack.url("reranker")
    info = httpx.get(f"{reranker}/api/reranking/info-modele").json()
    assert info["version"] == "v0"
    assert info["kind"] == "bm25+dense+bm25_prf+dense_prf"
    before = search(stack, "machine learning tutorial")
    assert before["model_version"] == "v0"
    assert len(before["results"]) == 10
    assert [r["rank"] for r in before["results"]] == list(range(1, 11))

    given: dict[str, dict[str, float]] = {}
    sent = rate_top_results(stack, given)
    assert sent == 96
    assert stats(stack)["feedback"]["total"] == 96

    info = wait_for(
        lambda: (i := httpx.get(f"{reranker}/api/reranking/info-modele").json())["version"] != "v0" and i,
        timeout_s=240, what="a new model version in info-modele",
    )
    assert info["version"] == "v0001"
    # The tiny base is a cross-encoder candidate (auto); the memory is in every trained version.
    assert info["kind"].startswith("bm25+dense") and "memory" in info["kind"].split("+")
    assert info["metrics"]["ndcg@10"] >= 0
    version_dir = Path(info["path"])
    for name in ("config.json", "model.safetensors", "pipeline.json", "training_metadata.json",
                 "training_report.txt", "report.html", "feedback_memory.json", "feedback_memory.npy"):
        assert (version_dir / name).is_file(), name

    after = search(stack, "machine learning tutorial")
    assert after["model_version"] == "v0001"
    old = {r["resource_id"]: r["rerank_score"] for r in before["results"]}
    new = {r["resource_id"]: r["rerank_score"] for r in after["results"]}
    common = set(old) & set(new)
    assert common
    assert any(abs(old[i] - new[i]) > 1e-6 for i in common), "the new version must score differently"
    assert "memory" in after["results"][0]["scores"]
    # What it learned: on the rated queries, what users liked scores above what they disliked (the
    # queries the run held out for validation are not in its memory: at most a third of them here).
    wrong = memory_separates(stack, given)
    assert len(wrong) <= len(given) // 3, wrong

    runs = httpx.get(f"{stack.url('trainer')}/admin/runs").json()["runs"]
    assert any(r["status"] == "promoted" and r["version"] == "v0001" for r in runs)
    aggregator = httpx.get(f"{stack.url('aggregator')}/stats").json()
    assert aggregator["counts"]["total"] == 96
    assert aggregator["counts"]["like"] + aggregator["counts"]["dislike"] == 96


def test_bad_input_is_refused_and_nothing_is_stored(stack: LocalStack) -> None:
    reranker, collector = stack.url("reranker"), stack.url("collector")
    body = search(stack, "python for data analysis")
    shown = body["results"][0]["resource_id"]
    wait_for(lambda: inference_stored(stack, body["inference_id"]), 10, 0.1, "the inference record")
    before = stats(stack)

    cases = [
        ({"inference_id": "no-such-inference", "resource_id": shown, "feedback": "like"}, 404, "not found"),
        ({"inference_id": body["inference_id"], "resource_id": "res-unknown", "feedback": "like"}, 422,
         "was not among the results"),
        ({"inference_id": body["inference_id"], "resource_id": shown, "feedback": "love"}, 422, "like"),
        ({"inference_id": body["inference_id"], "resource_id": shown}, 422, "feedback"),
    ]
    for payload, status, message in cases:
        response = httpx.post(f"{collector}/api/feedback", json=payload)
        assert response.status_code == status, (payload, response.text)
        assert message in response.text
    malformed = httpx.post(f"{collector}/api/feedback", content=b"{not json",
                           headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422
    assert "JSON" in malformed.text or "json" in malformed.text

    for payload in ({"query_text": ""}, {"query_text": "x", "top_k": 0}, {"query_text": "x", "top_k": 1000},
                    {"use_reranker": True}):
        response = httpx.post(f"{reranker}/api/reranking/search-with-reranking", json=payload)
        assert response.status_code == 422, (payload, response.text)
        assert response.json()["detail"]
    malformed = httpx.post(f"{reranker}/api/reranking/search-with-reranking", content=b"[",
                           headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422

    after = stats(stack)
    assert after["feedback"] == before["feedback"]
    assert after["inferences"]["total"] == before["inferences"]["total"]


def test_every_service_reports_health_and_metrics(stack: LocalStack) -> None:
    for name in ("reranker", "collector", "aggregator", "trainer"):
        assert httpx.get(f"{stack.url(name)}/health").status_code == 200, name
        assert httpx.get(f"{stack.url(name)}/ready").status_code == 200, name
        exported = httpx.get(f"{stack.url(name)}/metrics").text
        assert "eduranker_" in exported, name
    assert "eduranker_http_requests_total" in httpx.get(f"{stack.url('reranker')}/metrics").text


def scraped_metric_names(text: str) -> set[str]:
    """Sample names a scrape offers, labelled families with no sample yet included."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def test_every_metric_the_dashboard_and_alerts_use_is_scraped_from_the_services(stack: LocalStack) -> None:
    """Prometheus reads the running processes, not shared/metrics.py: scrape them the same way."""
    scraped: set[str] = set()
    for name in ("reranker", "collector", "aggregator", "trainer"):
        scraped |= scraped_metric_names(httpx.get(f"{stack.url(name)}/metrics", timeout=10).text)
    used = {n for expr in dashboard_exprs(json.loads(DASHBOARD.read_text()))
            for n in metric_names(grafana_to_promql(expr))}
    used |= {n for rule in alert_rules() for n in metric_names(rule["expr"])}
    missing = used - scraped - {"up"}
    assert used and not missing, f"used by dashboard or alerts, scraped from no service: {sorted(missing)}"
