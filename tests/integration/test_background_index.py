"""A reranker answers before its vectors are in, and finds a new resource without rebuilding its index.

Real SQLite store, real model code on the tiny BERT, the reranker over real HTTP. Embedding is held
back by a gate on the model's batch embedding (queries, one text each, pass), so the test sees the
state between "ready" and "every vector in" for as long as it needs, instead of racing it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.reranker.app import create_app
from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker, free_port
from shared.ml.ranking.pipeline import RankingModel, version_zero
from shared.ml.registry import Registry
from shared.settings import Settings
from tests.conftest import SAMPLE_CATALOGUE
from tests.integration.served import Served
from tools.catalogue import load_catalogue
from tools.localstack import wait_for
from tools.tiny_model import build_tiny_bert

SEARCH = "/api/reranking/search-with-reranking"
INFO = "/api/reranking/info-modele"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Resource texts (batches of more than one) wait for the gate; query embeddings do not."""
    opened = threading.Event()
    embed_texts = RankingModel.embed_texts

    def gated(self: RankingModel, texts: list[str], progress: bool = False) -> np.ndarray:
        if len(texts) > 1:
            assert opened.wait(120), "the test never opened the gate"
        return embed_texts(self, texts, progress)

    monkeypatch.setattr(RankingModel, "embed_texts", gated)
    yield opened
    opened.set()


def settings_for(tmp_path: Path, model: Path, broker: EmbeddedBroker, **extra: object) -> Settings:
    return Settings(store_url=f"sqlite:///{tmp_path / 'eduranker.db'}", model_dir=tmp_path / "models",
                    kafka_bootstrap=broker.bootstrap, base_model=str(model), embedding_model=str(model),
                    reranker_port=free_port(), watch_interval_s=0.5, embedding_chunk=100,
                    explore_share=0.0, **extra)  # the ranker's order, no explored swap


def search(url: str, query: str) -> list[dict]:
    response = httpx.post(url + SEARCH, json={"query_text": query, "top_k": 10}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def info(url: str) -> dict:
    return httpx.get(url + INFO, timeout=30).json()


def test_searches_answer_while_vectors_are_built_and_gain_the_dense_part_after(
        tiny_model: Path, broker: EmbeddedBroker, tmp_path: Path, gate: threading.Event) -> None:
    settings = settings_for(tmp_path, tiny_model, broker)
    ensure_topics(settings)
    asyncio.run(load_catalogue(settings.store_url, SAMPLE_CATALOGUE))
    with Served(create_app(settings), settings.reranker_port, "reranker") as served:
        ready = httpx.get(served.url + "/ready", timeout=10)
        assert ready.status_code == 200
        details = ready.json()["details"]
        assert details["embedding"]["embedded"] == 0 and details["embedding"]["complete"] is False
        assert details["catalogue_size"] == 350

        before = search(served.url, "photosynthesis in plants")
        assert before, "BM25 answers without any vector"
        for result in before:
            assert "dense" not in result["scores"] and "dense_prf" not in result["scores"]
            assert {"bm25", "bm25_prf"} <= set(result["scores"])
        assert info(served.url)["embedding"]["embedded"] == 0

        gate.set()
        wait_for(lambda: info(served.url)["embedding"]["complete"], 120, 0.2, "every vector in")
        after = search(served.url, "photosynthesis in plants")
        for result in after:
            assert {"bm25", "dense", "bm25_prf", "dense_prf"} <= set(result["scores"])
        progress = info(served.url)["embedding"]
        assert (progress["embedded"], progress["encoded"]) == (350, 350)
        assert httpx.get(served.url + "/ready", timeout=10).json()["details"]["embedding"]["complete"]


def test_a_new_resource_is_found_at_once_from_the_delta_then_merged_in_the_background(
        tiny_model: Path, broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, tiny_model, broker, delta_merge_at=3)
    ensure_topics(settings)
    asyncio.run(load_catalogue(settings.store_url, SAMPLE_CATALOGUE))
    with Served(create_app(settings), settings.reranker_port, "reranker") as served:
        start = info(served.url)["catalogue"]
        assert start["delta"] == 0 and start["resources"] == 350
        new = {"id": "res-new-1", "title": "Zymurgy for homebrewers",
               "description": "Fermentation chemistry, yeast strains and zymurgy at home."}
        written = httpx.post(served.url + "/api/resources", json={"resources": [new]}, timeout=30)
        assert written.status_code == 200
        # Searchable as soon as the write returns, and the BM25 index was not rebuilt for it.
        assert search(served.url, "zymurgy")[0]["resource_id"] == "res-new-1"
        catalogue = info(served.url)["catalogue"]
        assert catalogue["delta"] == 1 and catalogue["built_at"] == start["built_at"]
        assert catalogue["resources"] == 351

        # A link no page should open is refused at the door, naming the field; nothing changes.
        script = {**new, "title": "Zymurgy, clickable", "url": "javascript:alert(document.cookie)"}
        refused = httpx.post(served.url + "/api/resources", json={"resources": [script]}, timeout=30)
        assert refused.status_code == 422 and "absolute http or https" in refused.text
        assert "url" in refused.json()["detail"][0]["loc"]
        misspelt = {**new, "descripton": "a field no resource has"}  # a catalogue's own go in `fields`
        refused = httpx.post(served.url + "/api/resources", json={"resources": [misspelt]}, timeout=30)
        assert refused.status_code == 422 and "descripton" in refused.json()["detail"][0]["loc"]
        assert search(served.url, "zymurgy")[0]["title"] == new["title"]

        changed = {**new, "title": "Zymurgy and oenology for homebrewers"}
        assert httpx.post(served.url + "/api/resources", json={"resources": [changed]},
                          timeout=30).status_code == 200
        found = search(served.url, "oenology")
        assert found[0]["resource_id"] == "res-new-1" and found[0]["title"] == changed["title"]
        assert [r["resource_id"] for r in search(served.url, "zymurgy")].count("res-new-1") == 1
        assert info(served.url)["catalogue"]["resources"] == 351

        other = {"id": "res-new-2", "title": "Oenology basics", "description": "Wine making, step by step."}
        assert httpx.post(served.url + "/api/resources", json={"resources": [other]},
                          timeout=30).status_code == 200  # the third change: past delta_merge_at
        merged = wait_for(lambda: (c := info(served.url)["catalogue"])["built_at"] != start["built_at"]
                          and not c["merging"] and c, 60, 0.2, "the background merge")
        assert merged["delta"] == 0 and merged["resources"] == 352
        assert {r["resource_id"] for r in search(served.url, "oenology")[:2]} == {"res-new-1", "res-new-2"}
        wait_for(lambda: info(served.url)["embedding"]["complete"], 60, 0.2, "the new vectors in")
        assert info(served.url)["embedding"]["resources"] == 352
        assert "dense" in search(served.url, "oenology")[0]["scores"]


def test_a_version_with_another_embedder_serves_only_once_its_vectors_are_all_in(
        tiny_model: Path, tmp_path: Path, broker: EmbeddedBroker, gate: threading.Event,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.reranker.indexes")
    other = build_tiny_bert(tmp_path / "other-bi-encoder")  # same shape, other weights: other vectors
    settings = settings_for(tmp_path, tiny_model, broker)
    ensure_topics(settings)
    asyncio.run(load_catalogue(settings.store_url, SAMPLE_CATALOGUE))
    gate.set()
    with Served(create_app(settings), settings.reranker_port, "reranker") as served:
        wait_for(lambda: info(served.url)["embedding"]["complete"], 120, 0.2, "version 0's vectors")
        first = info(served.url)["embedding"]["model_id"]
        gate.clear()  # the new embedder's texts wait: the promoted version cannot be complete yet
        spec = version_zero(settings).model_copy(update={"version": "v0001", "embedding_model": str(other)})
        registry = Registry(settings.model_dir).ensure()
        registry.write_version("v0001", spec.save)
        registry.set_champion("v0001")
        # The watcher loads it and embeds the catalogue with the new model; meanwhile version 0 serves.
        wait_for(lambda: any("event=embedding_new_model" in m for m in caplog.messages), 60, 0.1,
                 "the new version's vectors under way")
        serving = info(served.url)
        assert serving["version"] == "v0" and serving["embedding"]["model_id"] == first
        assert search(served.url, "photosynthesis in plants")[0]["scores"].get("dense") is not None
        gate.set()
        switched = wait_for(lambda: (i := info(served.url))["version"] == "v0001" and i, 120, 0.2,
                            "the new version served")
        progress = switched["embedding"]
        assert progress["model_id"] != first and progress["complete"] and progress["embedded"] == 350
        assert progress["encoded"] == 350  # every text once with the new model, before it served
        assert "dense" in search(served.url, "photosynthesis in plants")[0]["scores"]
