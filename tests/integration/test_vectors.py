"""Resource vectors are computed once: kept in the store by (embedding model, text), read back by a
restarted reranker, embedded again only for a changed text or another model.

Real SQLite store, real model code on the tiny BERT, the reranker over real HTTP. "Embedded" is
counted where the reranker counts it (`info-modele`'s `embedding`, the `/metrics` counters).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.reranker.app import create_app
from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker, free_port
from shared.ml.ranking.pipeline import RankingModel, version_zero
from shared.ml.runtime.choice import pick_backend
from shared.ml.runtime.device import cpu_has_fast_bf16
from shared.ml.runtime.embedder import AUTO_RECORD, load_encoder
from shared.ml.runtime.loading import embed, embedder_identity, load_embedder
from shared.ml.runtime.vectors import EmbeddingCache, StoredVectors
from shared.ml.training.dataset import Pair
from shared.ml.training.run import index_for_pairs
from shared.settings import Settings
from shared.store.sqlite import SQLiteStore
from tests.conftest import SAMPLE_CATALOGUE
from tests.integration.served import Served
from tools.catalogue import load_catalogue, read_catalogue
from tools.localstack import wait_for
from tools.tiny_model import build_tiny_bert

SEARCH = "/api/reranking/search-with-reranking"
INFO = "/api/reranking/info-modele"
TEXTS = [r.text for r in read_catalogue(SAMPLE_CATALOGUE)]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT's architecture and file sizes, other random weights: what a fine-tune looks like."""
    return build_tiny_bert(tmp_path_factory.mktemp("other-tiny-bert"))


def test_identity_follows_the_weights_and_the_length_not_the_folder(tiny_model: Path,
                                                                    other_model: Path) -> None:
    one, again = load_embedder(str(tiny_model), 64, "cpu"), load_embedder(str(tiny_model), 64, "cpu")
    assert embedder_identity(one) == embedder_identity(again)
    other = load_embedder(str(other_model), 64, "cpu")
    weights = "model.safetensors"
    assert (other_model / weights).stat().st_size == (tiny_model / weights).stat().st_size
    assert embedder_identity(other) != embedder_identity(one)
    again.max_seq_length = 32  # truncated otherwise: other vectors
    assert embedder_identity(again) != embedder_identity(one)


def test_onnx_encoder_gives_torchs_vectors_in_fp32_and_stores_int8_and_bf16_apart(
        tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    embedder = load_embedder(str(tiny_model), 64, "cpu")
    texts = TEXTS[:40] + ["a", "photosynthesis " * 200]  # very short, and cut at max_length
    reference = embed(embedder, texts)
    fp32 = load_encoder(embedder, "onnx", tmp_path)
    assert fp32.backend == "onnx" and fp32.identity == embedder_identity(embedder)
    assert np.allclose(fp32(texts), reference, atol=1e-5)
    int8 = load_encoder(embedder, "onnx-int8", tmp_path)
    assert int8.backend == "onnx-int8" and int8.identity == embedder_identity(embedder) + "-int8"
    vectors = int8(texts)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float((vectors * reference).sum(axis=1).min()) > 0.9  # close, not the same: stored apart
    bf16 = load_encoder(embedder, "torch-bf16", tmp_path)
    assert bf16.backend == "torch-bf16" and bf16.identity == embedder_identity(embedder) + "-bf16"
    vectors = bf16(texts)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float((vectors * reference).sum(axis=1).min()) > 0.95
    assert bf16([]).shape == (0, reference.shape[1])
    assert np.allclose(bf16.query(texts), reference, atol=1e-5)  # queries in fp32 ONNX
    # auto times the runtimes here, once per embedder: a later start keeps what it measured.
    auto = load_encoder(embedder, "auto", tmp_path)
    record = json.loads((tmp_path / embedder_identity(embedder) / AUTO_RECORD).read_text())
    assert auto.backend == record["backend"] and "timed here" in auto.reason
    assert set(record["texts_per_s"]) == {"torch", "onnx", "onnx-int8"} | (
        {"torch-bf16"} if cpu_has_fast_bf16() else set())  # bf16 only where the CPU runs it natively
    speeds = record["texts_per_s"]
    assert auto.backend == pick_backend(speeds)[0]
    again = load_encoder(embedder, "auto", tmp_path)
    assert again.backend == auto.backend and again.reason.startswith("auto: kept from")
    assert load_encoder(embedder, "torch", tmp_path).backend == "torch"

    # A model the graph would not reproduce (CLS pooling) embeds with torch, and says why.
    embedder[1].pooling_mode = "cls"
    caplog.set_level(logging.WARNING, logger="shared.ml.runtime.embedder")
    fallback = load_encoder(embedder, "onnx", tmp_path / "cls")
    assert fallback.backend == "torch" and "pooling" in fallback.reason
    assert any("event=embedder_onnx_unavailable" in m for m in caplog.messages)


async def test_cache_reads_stored_vectors_and_embeds_only_what_is_missing(
        tiny_model: Path, other_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shared.ml.runtime.vectors")
    store = SQLiteStore(tmp_path / "store.db")
    await store.init()
    stored = StoredVectors(store, asyncio.get_running_loop())
    embedder = load_embedder(str(tiny_model), 64, "cpu")
    model_id = embedder_identity(embedder)
    batches: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        batches.append(len(texts))
        return embed(embedder, texts)

    try:
        first = EmbeddingCache(encode, model_id, stored, chunk=100)
        vectors = await asyncio.to_thread(first, TEXTS)
        assert first.progress.as_dict() == {"resources": 350, "embedded": 350, "encoded": 350,
                                            "from_store": 0, "complete": True}
        assert batches == [100, 100, 100, 50] and await store.count_vectors(model_id) == 350
        progress = [m for m in caplog.messages if m.startswith("event=embedding_progress")]
        assert [m.split(" embedded=")[1] for m in progress] == ["100 of=350", "200 of=350", "300 of=350",
                                                                 "350 of=350"]

        # A new process: nothing in memory, everything in the store.
        restarted = EmbeddingCache(encode, model_id, stored, chunk=100)
        again = await asyncio.to_thread(restarted, TEXTS)
        assert np.array_equal(again, vectors) and len(batches) == 4
        assert restarted.progress.as_dict() == {"resources": 350, "embedded": 350, "encoded": 0,
                                                "from_store": 350, "complete": True}

        changed = [TEXTS[0] + " Revised with new exercises.", *TEXTS[1:]]
        after = await asyncio.to_thread(restarted, changed)
        assert batches[4:] == [1] and restarted.progress.encoded == 1
        assert np.array_equal(after[1:], vectors[1:])
        assert np.allclose(after[0], embed(embedder, changed[:1])[0], atol=1e-5)
        await asyncio.to_thread(restarted, changed)
        assert len(batches) == 5  # the changed text once, not at every re-index

        other = load_embedder(str(other_model), 64, "cpu")
        others = EmbeddingCache(lambda texts: embed(other, texts), embedder_identity(other), stored)
        await asyncio.to_thread(others, TEXTS)
        assert others.progress.encoded == 350 and others.progress.from_store == 0
    finally:
        await store.close()


async def test_a_store_that_does_not_answer_costs_embedding_time_not_the_index(tiny_model: Path,
                                                                               tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    await store.init()
    await store.close()  # every read and write now fails as unavailable
    embedder = load_embedder(str(tiny_model), 64, "cpu")
    cache = EmbeddingCache(lambda texts: embed(embedder, texts), embedder_identity(embedder),
                           StoredVectors(store, asyncio.get_running_loop()))
    vectors = await asyncio.to_thread(cache, TEXTS[:20])
    assert vectors.shape == (20, 32) and cache.progress.encoded == 20 and cache.progress.from_store == 0


async def test_the_trainer_reads_the_vectors_a_reranker_stored(tiny_model: Path, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    await store.init()
    stored = StoredVectors(store, asyncio.get_running_loop())
    resources = list(read_catalogue(SAMPLE_CATALOGUE))
    settings = Settings(base_model=str(tiny_model), embedding_model=str(tiny_model), max_length=64)
    model = RankingModel.load(version_zero(settings), None, "cpu")
    assert model.embedder is not None
    pairs = [Pair(query="q", resource_id=r.id, text=r.text, label=n % 2)
             for n, r in enumerate(resources[:40])]

    def encoded() -> float:
        return REGISTRY.get_sample_value("eduranker_embedding_texts_total", {"source": "model"}) or 0.0

    try:
        served = EmbeddingCache(model.embed_texts, embedder_identity(model.embedder), stored)
        await asyncio.to_thread(served, [r.text for r in resources])
        before = encoded()
        index = await asyncio.to_thread(index_for_pairs, resources, pairs, model, stored)
        assert encoded() == before  # all 40 read back, none embedded
        rows, have = index.vectors_of(np.arange(len(resources)))
        expected = model.embed_texts([r.text for r in resources[:40]])
        assert np.allclose(rows[:40], expected, atol=1e-3)  # kept as float16
        assert have[:40].all() and not have[40:].any()  # what no pair needs stays unread
    finally:
        await store.close()


def reranker_settings(workdir: Path, model: Path, broker: EmbeddedBroker) -> Settings:
    return Settings(store_url=f"sqlite:///{workdir / 'eduranker.db'}", model_dir=workdir / "models",
                    kafka_bootstrap=broker.bootstrap, base_model=str(model), embedding_model=str(model),
                    reranker_port=free_port(), watch_interval_s=0.5)


def reranker(settings: Settings) -> Served:
    return Served(create_app(settings), settings.reranker_port, "reranker")


def embedding(served: Served) -> dict:
    """The reranker's embedding progress once every vector is in (it serves before that)."""
    def complete() -> dict | None:
        progress = httpx.get(served.url + INFO, timeout=30).json()["embedding"]
        return progress if progress["complete"] else None

    progress = wait_for(complete, 120, 0.2, "every vector in")
    return {k: v for k, v in progress.items() if k not in ("backend", "backend_reason")}


def dense_scores(served: Served) -> dict[str, float]:
    response = httpx.post(served.url + SEARCH, json={"query_text": "photosynthesis in plants", "top_k": 10},
                          timeout=60)
    assert response.status_code == 200, response.text
    return {r["resource_id"]: r["scores"]["dense"] for r in response.json()["results"]}


def metric(served: Served, name: str, labels: str) -> float:
    text = httpx.get(served.url + "/metrics", timeout=10).text
    match = re.search(rf"^{name}{{{labels}}} (\S+)$", text, re.M)
    assert match, f"{name}{{{labels}}} not exported"
    return float(match.group(1))


def test_restarted_reranker_embeds_nothing_and_a_changed_resource_once(
        tiny_model: Path, other_model: Path, broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = reranker_settings(tmp_path, tiny_model, broker)
    ensure_topics(settings)
    asyncio.run(load_catalogue(settings.store_url, SAMPLE_CATALOGUE))

    with reranker(settings) as first:
        progress = embedding(first)
        assert progress | {"model_id": None} == {"model_id": None, "stored": True, "resources": 350,
                                                 "embedded": 350, "encoded": 350, "from_store": 0,
                                                 "complete": True}
        scores = dense_scores(first)
        assert metric(first, "eduranker_embedding_resources", 'state="embedded"') == 350
        encoded = metric(first, "eduranker_embedding_texts_total", 'source="model"')

    with reranker(reranker_settings(tmp_path, tiny_model, broker)) as restarted:
        assert embedding(restarted) == progress | {"encoded": 0, "from_store": 350}
        assert dense_scores(restarted) == scores  # the same vectors, read back
        assert metric(restarted, "eduranker_embedding_texts_total", 'source="model"') == encoded
        resource = {"id": "res-0001", "title": "Type Systems and Programming Language Theory",
                    "description": "Revised: lambda calculus, type inference and dependent types."}
        for _ in range(2):  # the second upsert changes nothing: nothing to embed
            response = httpx.post(restarted.url + "/api/resources", json={"resources": [resource]},
                                  timeout=60)
            assert response.status_code == 200, response.text
            assert embedding(restarted)["encoded"] == 1
            assert embedding(restarted)["resources"] == 350

    with reranker(reranker_settings(tmp_path, tiny_model, broker)) as again:
        assert embedding(again) == progress | {"encoded": 0, "from_store": 350}

    with reranker(reranker_settings(tmp_path, other_model, broker)) as other:
        fresh = embedding(other)
        assert fresh["model_id"] != progress["model_id"]
        assert (fresh["encoded"], fresh["from_store"]) == (350, 0)
