"""Filters, facets, pages and languages through the real reranker (HTTP, SQLite store, the broker).

The catalogue is the sample catalogue (English) with the French test collection (tests/french.py).
What the answers must say is counted here from the resources themselves.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.reranker.app import create_app
from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker, free_port
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.records import Inference, Resource
from shared.settings import Settings
from shared.store import open_store
from tests import french
from tests.conftest import SAMPLE_CATALOGUE
from tests.integration.served import Served
from tools.localstack import wait_for

SEARCH = "/api/reranking/search-with-reranking"
SAMPLE = [Resource.model_validate_json(line) for line in SAMPLE_CATALOGUE.read_text().splitlines()
          if line.strip()]
CATALOGUE = [*SAMPLE, *french.resources("fr")]
QUERY = "learning"


async def upsert(store_url: str, resources: list[Resource]) -> None:
    store = await open_store(store_url)
    try:
        await store.upsert_resources(resources)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path,
             broker: EmbeddedBroker) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("narrowing")
    settings = Settings(store_url=f"sqlite:///{path / 'eduranker.db'}", model_dir=path / "models",
                        kafka_bootstrap=broker.bootstrap, base_model=str(tiny_model),
                        embedding_model=str(tiny_model), reranker_port=free_port(), watch_interval_s=0.5,
                        explore_share=0.0)  # orders asserted are the ranker's: no explored swap
    ensure_topics(settings)
    asyncio.run(upsert(settings.store_url, CATALOGUE))
    with Served(create_app(settings), settings.reranker_port, "reranker") as served:
        yield served


def search(reranker: Served, **body: Any) -> dict:
    response = httpx.post(reranker.url + SEARCH, json={"query_text": QUERY, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def refused(reranker: Served, **body: Any) -> str:
    response = httpx.post(reranker.url + SEARCH, json={"query_text": QUERY, **body}, timeout=60)
    assert response.status_code == 422, response.text
    return response.text


def logged(reranker: Served, inference_id: str) -> Inference:
    async def fetch() -> Inference | None:
        store = await open_store(reranker.app.state.settings.store_url)
        try:
            return await store.get_inference(inference_id)
        finally:
            await store.close()

    return wait_for(lambda: asyncio.run(fetch()), 10, 0.1, "the inference record")


SCORES = CatalogueIndex(CATALOGUE).bm25_all(QUERY)
MATCH = [r for r, score in zip(CATALOGUE, SCORES, strict=True) if score > 0]
"""What the query matches, from the index's BM25 alone: the answers' counts are checked against it."""


def test_filters_narrow_before_the_candidates_and_facets_count_the_whole_match(reranker: Served) -> None:
    facets = ["level", "type", "subject", "language"]
    plain = search(reranker, facets=facets)
    assert plain["total"] == len(MATCH) > len(plain["results"]) == 10
    for name in ("level", "type", "subject"):
        assert plain["facets"][name] == Counter(getattr(r, name) for r in MATCH)
    assert plain["facets"]["language"] == Counter(r.language for r in MATCH)

    either = search(reranker, filters={"level": ["beginner", "advanced"]}, facets=["level", "type"],
                    top_k=100)
    levels = Counter(r.level for r in MATCH)
    assert either["total"] == levels["beginner"] + levels["advanced"] == len(either["results"])
    assert {r["level"] for r in either["results"]} == {"beginner", "advanced"}
    assert either["facets"]["level"] == plain["facets"]["level"]  # its own filter left out

    both = search(reranker, filters={"level": ["beginner"], "type": ["exercise", "video"]}, facets=["type"],
                  top_k=100)
    expected = {r.id for r in MATCH if r.level == "beginner" and r.type in ("exercise", "video")}
    assert {r["resource_id"] for r in both["results"]} == expected and both["total"] == len(expected)
    assert both["facets"]["type"] == Counter(r.type for r in MATCH if r.level == "beginner")

    nobody = search(reranker, filters={"level": ["expert"]}, facets=["level"])
    assert nobody["total"] == 0 and nobody["results"] == []
    assert nobody["facets"]["level"] == plain["facets"]["level"]

    # The best matching resources are reranked, not what is left of an unfiltered top 5.
    unfiltered = search(reranker, top_k=5, candidates=5)
    books = search(reranker, filters={"type": ["book"]}, top_k=5, candidates=5)
    assert sum(r["type"] == "book" for r in unfiltered["results"]) < 5
    assert len(books["results"]) == 5 and {r["type"] for r in books["results"]} == {"book"}
    assert books["candidates"] == 5
    record = logged(reranker, books["inference_id"])
    assert record.filters == {"type": ["book"]} and record.offset == 0 and record.language is None


def test_a_field_that_is_not_filterable_is_refused_naming_it(reranker: Served) -> None:
    assert "'title' is not a filterable field" in refused(reranker, filters={"title": ["x"]})
    assert "'url' is not a filterable field" in refused(reranker, facets=["url"])
    assert "subject, level, type, language" in refused(reranker, facets=["url"])
    refused(reranker, filters={"level": []})
    refused(reranker, offset=10_001)
    assert "'xx' is not one EduRanker analyses" in refused(reranker, language="xx")


def test_pages_continue_one_ranking_with_nothing_twice_and_nothing_skipped(reranker: Served) -> None:
    first = search(reranker, top_k=5, candidates=8)
    ranking_id, total = first["ranking_id"], first["total"]
    assert ranking_id == first["inference_id"] and total > 30
    pages = [first] + [search(reranker, top_k=5, candidates=8, offset=offset, ranking_id=ranking_id)
                       for offset in range(5, 30, 5)]
    shown = [r for page in pages for r in page["results"]]
    ids = [r["resource_id"] for r in shown]
    assert len(ids) == len(set(ids)) == 30
    assert [r["rank"] for r in shown] == list(range(1, 31))
    assert all(page["total"] == total and page["ranking_id"] == ranking_id for page in pages)
    bm25 = [r["resource_id"] for r in search(reranker, use_reranker=False, top_k=30)["results"]]
    assert set(ids[:8]) == set(bm25[:8]) and ids[8:] == bm25[8:]  # reranked candidates, then BM25
    assert all(r["rerank_score"] is not None for r in shown[:8])
    assert all(r["rerank_score"] is None and set(r["scores"]) == {"bm25"} for r in shown[8:])
    record = logged(reranker, pages[2]["inference_id"])  # one inference per page
    assert record.offset == 10 and record.ranking_id == ranking_id
    assert [r.rank for r in record.results] == [11, 12, 13, 14, 15]
    past = search(reranker, top_k=5, offset=total, ranking_id=ranking_id)
    assert past["results"] == [] and past["total"] == total


def test_each_resource_is_matched_in_its_language_or_the_one_a_search_names(reranker: Served) -> None:
    # BM25 order: the first stage is what the analysis decides (the tiny model's dense scores are noise).
    body = search(reranker, query_text="theoreme de pythagore", facets=["language"], use_reranker=False)
    assert body["query_languages"] == ["en", "fr"]
    assert body["results"][0]["resource_id"] == "fr-geometrie-0" and body["results"][0]["language"] == "fr"
    assert set(body["facets"]["language"]) == {"en", "fr"}  # "theorem" in English resources too
    french_only = search(reranker, query_text="les journaux", filters={"language": ["fr"]}, top_k=3)
    assert french_only["results"][0]["resource_id"].startswith("fr-presse-")
    assert {r["language"] for r in french_only["results"]} == {"fr"}
    named = search(reranker, query_text="l'algèbre", language="FR", top_k=3, use_reranker=False)
    assert named["query_languages"] == ["fr"] and named["results"][0]["resource_id"].startswith("fr-algebre")
    assert logged(reranker, named["inference_id"]).language == "fr"
