"""The reranker over real HTTP (uvicorn on a free port), a real SQLite store and the real broker.

Versions are written to a real registry with the tiny BERT; reloads are triggered the way
the trainer does it, with a `model.ready` event on Kafka.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from sentence_transformers import CrossEncoder

from services.reranker.app import create_app
from services.reranker.inference_log import InferenceLog
from services.reranker.routes.search import MAX_QUERY_CHARS, query_as_read
from shared.events import MODEL_READY_TOPIC, ModelReadyEvent
from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker, free_port
from shared.ml.ranking.pipeline import PipelineSpec
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.registry import Registry
from shared.ml.runtime.loading import cross_scores, load_cross_encoder
from shared.ml.runtime.onnx import load_onnx_cross_encoder
from shared.records import Inference, ShownResult, new_id
from shared.settings import Settings
from shared.store import open_store
from tests.conftest import ROOT, SAMPLE_CATALOGUE
from tests.integration.bus import send
from tools.catalogue import load_catalogue, read_catalogue
from tools.localstack import wait_for

SEARCH = "/api/reranking/search-with-reranking"
INFO = "/api/reranking/info-modele"


class Server:
    """The reranker app served by uvicorn in a thread, so tests talk real HTTP to it."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.url = f"http://127.0.0.1:{settings.reranker_port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=settings.reranker_port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="reranker-under-test", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 120, 0.1, "uvicorn to start")
        assert self.server.started, "the reranker failed to start; see the log above"
        wait_for(lambda: httpx.get(self.url + "/ready").status_code == 200, 60, 0.2, "/ready")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the reranker did not shut down"

    def info(self) -> dict:
        return httpx.get(self.url + INFO, timeout=30).json()

    def search(self, query: str, **extra: object) -> dict:
        response = httpx.post(self.url + SEARCH, json={"query_text": query, **extra}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        match = re.search(rf"^{name}{{{wanted}}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0


def write_version(registry: Registry, name: str, tiny_model: Path,
                  damage: Callable[[Path], None] | None = None) -> Path:
    """A registry version like the trainer writes: cross-encoder files plus `pipeline.json`."""

    def write(folder: Path) -> None:
        CrossEncoder(str(tiny_model), num_labels=1, max_length=64).save_pretrained(str(folder))
        PipelineSpec(version=name, base_model=str(tiny_model), embedding_model=str(tiny_model),
                     cross_encoder=".", weights={"bm25": 1.0, "dense": 1.0, "cross": 1.0}, max_length=64,
                     metrics={"ndcg@10": 0.5}).save(folder)
        if damage is not None:
            damage(folder)

    return registry.write_version(name, write)


def settings_for(workdir: Path, tiny_model: Path, broker: EmbeddedBroker, **extra: object) -> Settings:
    return Settings(store_url=f"sqlite:///{workdir / 'eduranker.db'}", model_dir=workdir / "models",
                    kafka_bootstrap=broker.bootstrap, base_model=str(tiny_model),
                    embedding_model=str(tiny_model), reranker_port=free_port(), watch_interval_s=0.5,
                    **extra)


def announce(settings: Settings, version: str, location: str | None = None) -> None:
    """What the trainer sends after promoting a version."""
    send(settings, MODEL_READY_TOPIC, ModelReadyEvent(
        version=version, location=location or version, base_model=settings.base_model, decision="promoted"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, broker: EmbeddedBroker) -> Path:
    path = tmp_path_factory.mktemp("reranker")
    settings = settings_for(path, tiny_model, broker)
    ensure_topics(settings)
    asyncio.run(load_catalogue(settings.store_url, SAMPLE_CATALOGUE))
    write_version(Registry(settings.model_dir), "v0001", tiny_model)
    return path


@pytest.fixture(scope="module")
def server(workdir: Path, tiny_model: Path, broker: EmbeddedBroker) -> Iterator[Server]:
    with Server(settings_for(workdir, tiny_model, broker)) as running:
        yield running


def on_version_zero(server: Server) -> None:
    """The shared server back on version 0, whatever a test before this one had it serve."""
    settings = server.app.state.settings
    if server.info()["version"] != "v0":
        Registry(settings.model_dir).clear_champion()
        announce(settings, "v0")
        wait_for(lambda: server.info()["version"] == "v0", 120, 0.2, "version 0 served again")


def test_starts_on_version_zero_and_reports_the_model(server: Server) -> None:
    on_version_zero(server)
    info = server.info()
    assert info["kind"] == "bm25+dense+bm25_prf+dense_prf"
    for key in ("version", "base_model", "path", "device", "backend", "loaded_at", "metrics",
                "inferences_served"):
        assert key in info, key
    assert info["device"] == "cpu" and info["backend"] == "torch"


def test_catalogue_changes_are_searchable_without_restart(server: Server) -> None:
    resource = {"id": "res-zz-1", "title": "Quaternion rotations for game developers",
                "description": "Gimbal lock, slerp and composing rotations.", "subject": "mathematics",
                "url": "https://example.org/quaternions"}
    response = httpx.post(server.url + "/api/resources", json={"resources": [resource]})
    assert response.status_code == 200, response.text
    found = server.search("quaternion rotations", use_reranker=False, top_k=3)["results"]
    assert found[0]["resource_id"] == "res-zz-1"
    assert found[0]["url"] == "https://example.org/quaternions"

    updated = {**resource, "title": "Quaternions and octonions for game developers"}
    assert httpx.post(server.url + "/api/resources", json={"resources": [updated]}).status_code == 200
    assert httpx.get(server.url + "/api/resources/res-zz-1").json()["title"] == updated["title"]
    found = server.search("octonions", use_reranker=True, top_k=3)["results"]
    best = max(found, key=lambda r: r["rerank_score"])  # an explored search may show it second
    assert best["resource_id"] == "res-zz-1" and best["title"] == updated["title"]

    assert httpx.get(server.url + "/api/resources/res-missing").status_code == 404
    twice = httpx.post(server.url + "/api/resources", json={"resources": [resource, resource]})
    assert twice.status_code == 422 and "unique" in twice.text
    # A control character in an id is refused, in the words every identifier is refused with.
    for bad in ("res\x00nul", "res\u2028"):
        refused = httpx.post(server.url + "/api/resources", json={"resources": [{**resource, "id": bad}]})
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "resources", 0, "id"]
        assert "an id must be printable text: U+" in refused.json()["detail"][0]["msg"]
    lookup = httpx.get(server.url + "/api/resources/res%00nul")
    assert lookup.status_code == 422 and "an id must be printable text" in lookup.text
    assert lookup.json()["detail"][0]["loc"] == ["path", "resource_id"]


def test_both_search_modes(server: Server) -> None:
    query = "machine learning tutorial"
    plain = server.search(query, use_reranker=False, top_k=10)
    resources = list(read_catalogue(SAMPLE_CATALOGUE))
    extra = httpx.get(server.url + "/api/resources/res-zz-1")
    if extra.status_code == 200:
        resources.append(type(resources[0]).model_validate(extra.json()))
    positions, bm25 = CatalogueIndex(resources).bm25_top(query, 10)
    # Same order as BM25 alone (compared by score: equal scores may come in either order). Resources
    # added since start sit in the delta, whose statistics (document count, mean length) are the
    # index's of start until a merge: scores agree to a few parts in ten thousand.
    assert [r["first_stage_score"] for r in plain["results"]] == pytest.approx(bm25.tolist(), rel=2e-3)
    assert {r["resource_id"] for r in plain["results"]} == {resources[p].id for p in positions}
    assert plain["candidates"] == 0
    for result in plain["results"]:
        assert result["rerank_score"] is None and set(result["scores"]) == {"bm25"}

    reranked = server.search(query, use_reranker=True, top_k=5, candidates=30)
    assert reranked["candidates"] == 30
    results = reranked["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    scores = [r["rerank_score"] for r in results]
    # Outside experiments, EDURANKER_EXPLORE_SHARE of the searches (10 %) swap one pair of
    # neighbours to learn where people look: the order is the scores' but for at most that pair.
    out_of_order = [i for i in range(len(scores) - 1) if scores[i] < scores[i + 1]]
    assert len(out_of_order) <= 1, scores
    for i in out_of_order:
        scores[i], scores[i + 1] = scores[i + 1], scores[i]
    assert scores == sorted(scores, reverse=True), scores
    for result in results:
        assert {"resource_id", "title", "url", "rank", "first_stage_score", "rerank_score"} <= set(result)
        assert {"bm25", "dense", "fused"} <= set(result["scores"])
    assert server.search(query, top_k=5)["candidates"] == 50  # the default

    for bad in ({"candidates": 201}, {"candidates": 0}, {"top_k": 101}, {"query_text": "   "}):
        response = httpx.post(server.url + SEARCH, json={"query_text": query, **bad})
        assert response.status_code == 422, bad


def test_rerank_with_caller_documents_and_its_limits(server: Server) -> None:
    documents = [{"id": "a", "text": "Cooking pasta at home"},
                 {"id": "b", "text": "A machine learning tutorial for beginners"},
                 {"id": "c", "text": "Machine learning: gradient descent, tutorial and exercises"}]
    response = httpx.post(server.url + "/api/reranking/rerank",
                          json={"query": "machine learning tutorial", "documents": documents})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["id"] for r in results) == ["a", "b", "c"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:], strict=False))
    bm25 = {r["id"]: r["scores"]["bm25"] for r in results}  # BM25 over the caller's documents
    assert bm25["a"] == 0 and bm25["b"] > 0 and bm25["c"] > 0
    assert all({"bm25", "dense"} <= set(r["scores"]) for r in results)

    too_many = [{"id": str(i), "text": "text"} for i in range(201)]
    too_long = [{"id": "x", "text": "word " * 2001}]
    duplicated = [{"id": "x", "text": "one"}, {"id": "x", "text": "two"}]
    for docs, message in ((too_many, "200"), (too_long, "10000"), (duplicated, "unique"), ([], "1")):
        response = httpx.post(server.url + "/api/reranking/rerank", json={"query": "q", "documents": docs})
        assert response.status_code == 422, response.text[:200]
        assert message in response.text


def logged_inference(server: Server, inference_id: str) -> Inference:
    """The search's record in the store, once the background inference log has written it."""

    async def fetch() -> Inference | None:
        store = await open_store(server.app.state.settings.store_url)
        try:
            return await store.get_inference(inference_id)
        finally:
            await store.close()

    return wait_for(lambda: asyncio.run(fetch()), 10, 0.1, "the inference record")


def test_a_pasted_paragraph_is_searched_on_what_the_rankers_read(server: Server) -> None:
    paragraph = ("Linear algebra for beginners: vectors, matrices, determinants and eigenvalues, "
                 "with worked exercises on systems of equations. ") * 60  # about 7,500 characters
    body = server.search(paragraph, top_k=3)
    assert len(paragraph) > 3 * MAX_QUERY_CHARS and body["query_text"] == query_as_read(paragraph)
    assert len(body["query_text"]) <= MAX_QUERY_CHARS and paragraph.startswith(body["query_text"])
    assert body["query_truncated"] is True
    assert server.search("linear algebra", top_k=1)["query_truncated"] is False
    assert body["results"] and body["results"][0]["first_stage_score"] > 0

    # Feedback on it trains on the query as read, as it was ranked.
    assert logged_inference(server, body["inference_id"]).query == body["query_text"]
    rerank = httpx.post(server.url + "/api/reranking/rerank", timeout=60, json={
        "query": paragraph, "documents": [{"id": "a", "text": "eigenvalues of a matrix"},
                                          {"id": "b", "text": "baking bread"}]})
    assert rerank.status_code == 200, rerank.text
    assert rerank.json()["results"][0]["id"] == "a"


def test_every_search_is_logged_completely(server: Server) -> None:
    before = server.info()["inferences_served"]
    body = server.search("linear algebra for beginners", use_reranker=True, top_k=4)
    record = logged_inference(server, body["inference_id"])
    assert record.query == "linear algebra for beginners"
    assert record.model_version == body["model_version"] and record.use_reranker is True
    assert record.latency_ms > 0 and record.created_at is not None
    assert [r.rank for r in record.results] == [1, 2, 3, 4]
    for shown, returned in zip(record.results, body["results"], strict=True):
        assert shown.resource_id == returned["resource_id"]
        assert shown.rerank_score == pytest.approx(returned["rerank_score"])
        assert shown.first_stage_score == pytest.approx(returned["first_stage_score"])
        assert {"bm25", "fused"} <= set(shown.scores)
    info = server.info()
    if info["version"] == body["model_version"]:
        assert info["inferences_served"] >= before + 1


async def test_a_clean_shutdown_drains_the_inference_log(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'log.db'}")
    log = InferenceLog(store, max_batch=50)
    log.start()
    ids = [new_id() for _ in range(300)]
    for inference_id in ids:  # queued without yielding: nothing is written before close()
        shown = [ShownResult(resource_id="r", rank=1, first_stage_score=1.0)]
        log.add(Inference(inference_id=inference_id, query="q", model_version="v0", use_reranker=False,
                          latency_ms=1.0, results=shown))
    assert log.queue.qsize() == 300
    await log.close()
    assert len(await store.get_inferences(ids)) == 300
    await store.close()


async def test_the_inference_log_outlives_a_write_its_driver_cancels(tmp_path: Path) -> None:
    """A `CancelledError` that is not the writer's own stop (an async driver ending its work on a lost
    server) is retried like any failure: the record is written, and the writer still stops."""
    store = await open_store(f"sqlite:///{tmp_path / 'log.db'}")
    add, calls = store.add_inferences, 0

    async def driver_cancels_once(batch: list[Inference]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError("the driver's own")
        await add(batch)

    store.add_inferences = driver_cancels_once  # type: ignore[method-assign]
    log = InferenceLog(store)
    log.start()
    log.add(Inference(inference_id="after-a-cancel", query="q", model_version="v0", use_reranker=False,
                      latency_ms=1.0, results=[ShownResult(resource_id="r", rank=1, first_stage_score=1.0)]))
    await asyncio.wait_for(log.close(), 10)
    assert calls == 2
    assert list(await store.get_inferences(["after-a-cancel"])) == ["after-a-cancel"]
    await store.close()


def test_reload_under_search_traffic_fails_no_request(server: Server, workdir: Path) -> None:
    on_version_zero(server)
    successes = server.metric("eduranker_model_reloads_total", outcome="success")
    stop, failures, versions = threading.Event(), [], []

    def hammer(use_reranker: bool) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                response = client.post(SEARCH, json={"query_text": "python for data analysis",
                                                     "use_reranker": use_reranker, "top_k": 5})
                if response.status_code != 200:
                    failures.append(response.status_code)
                else:
                    versions.append(response.json()["model_version"])

    threads = [threading.Thread(target=hammer, args=(i % 2 == 0,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(versions) >= 8, 60, 0.05, "traffic before the reload")
        announce(server.app.state.settings, "v0001")
        wait_for(lambda: server.info()["version"] == "v0001", 120, 0.2, "v0001 served")
        served = len(versions)
        wait_for(lambda: len(versions) >= served + 8, 60, 0.05, "traffic after the reload")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == []
    assert versions[0] == "v0" and versions[-1] == "v0001"
    assert server.metric("eduranker_model_reloads_total", outcome="success") == successes + 1
    info = server.info()
    assert info["kind"] == "bm25+dense+cross" and info["metrics"] == {"ndcg@10": 0.5}
    assert info["backend"] in ("torch", "torch-bf16", "onnx", "onnx-int8")
    assert info["rerank_depth"] == Settings().rerank_depth and info["cross_cache"]["max_entries"] == 100_000
    first = server.search("python", top_k=10)
    looked = server.info()["cross_cache"]
    again = server.search("python", top_k=10)
    after = server.info()["cross_cache"]
    # The repeated search is answered from the cache: the same results with the same scores (in an
    # order that an explored search may have swapped once).
    assert ({r["resource_id"]: r["scores"] for r in again["results"]}
            == {r["resource_id"]: r["scores"] for r in first["results"]})
    assert after["hits"] > looked["hits"] and (after["misses"], after["entries"]) == (
        looked["misses"], looked["entries"])
    assert "cross" in first["results"][0]["scores"]

    # Another version (another head) asked the same query starts with a cache of its own: every
    # score it serves is its own model's, none the previous version's.
    write_version(Registry(server.app.state.settings.model_dir), "v0011", Path(info["base_model"]))
    announce(server.app.state.settings, "v0011")
    wait_for(lambda: server.info()["version"] == "v0011", 120, 0.2, "v0011 served")
    fresh = server.info()["cross_cache"]
    second = server.search("python", top_k=10)
    cached = {r["resource_id"]: r["scores"]["cross"] for r in first["results"] if "cross" in r["scores"]}
    own = {r["resource_id"]: r["scores"]["cross"] for r in second["results"] if "cross" in r["scores"]}
    assert own and all(own[k] != cached[k] for k in own.keys() & cached.keys())
    assert server.info()["cross_cache"]["hits"] == fresh["hits"]


def garbage_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(os.urandom(4096))


def wider_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64, "intermediate_size": 128}))


def deeper_config(folder: Path) -> None:
    """Loads without error in transformers (missing layers are filled randomly): must still be refused."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))


def no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def broken_pipeline(folder: Path) -> None:
    (folder / "pipeline.json").write_text("{not json")


def other_versions_pipeline(folder: Path) -> None:
    spec = PipelineSpec.load(folder)
    spec.model_copy(update={"version": "v0001"}).save(folder)


DAMAGES = {"v0002": garbage_weights, "v0003": wider_config, "v0004": deeper_config, "v0005": no_weights,
           "v0006": broken_pipeline, "v0007": other_versions_pipeline}


def test_broken_versions_and_outside_locations_are_refused(server: Server, workdir: Path, tiny_model: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(server.app.state.settings.model_dir)
    for name, damage in DAMAGES.items():
        if not (registry.root / name).exists():
            write_version(registry, name, tiny_model, damage)
    before = server.info()
    failed = server.metric("eduranker_model_reloads_total", outcome="failed")
    outside = ["../x", "/etc", "v0001/../../x", "v9999"]
    settings = server.app.state.settings
    with caplog.at_level(logging.ERROR):
        for name in DAMAGES:
            announce(settings, name)
        for location in outside:
            announce(settings, "v0009", location)
        info = wait_for(lambda: len((i := server.info())["failed_versions"]) >= len(DAMAGES) + len(outside)
                        and i, 120, 0.2, "every bad version refused")
    assert set(info["failed_versions"]) >= set(DAMAGES) | set(outside)
    assert "missing from the checkpoint" in info["failed_versions"]["v0004"]
    assert "outside" in info["failed_versions"]["/etc"] or "not a version" in info["failed_versions"]["/etc"]
    assert server.metric("eduranker_model_reloads_total", outcome="failed") >= failed + len(DAMAGES) + 3
    assert info["version"] == before["version"] and info["loaded_at"] == before["loaded_at"]
    assert server.search("statistics hypothesis testing", top_k=3)["model_version"] == before["version"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("event=reload_failed location=v0003" in e for e in errors)


def test_every_replica_reloads_an_announced_version_and_a_late_one_starts_on_the_champion(
        workdir: Path, tiny_model: Path, broker: EmbeddedBroker) -> None:
    """Replicas read `model.ready` without a consumer group, so each one gets every event.

    The registry's `current` is not moved before the event: only the broadcast can make both
    replicas switch. A replica started afterwards never sees the event and loads the champion.
    """
    registry = Registry(settings_for(workdir, tiny_model, broker).model_dir)
    write_version(registry, "v0010", tiny_model)
    with Server(settings_for(workdir, tiny_model, broker)) as first, \
            Server(settings_for(workdir, tiny_model, broker)) as second:
        assert first.info()["version"] != "v0010" and second.info()["version"] != "v0010"
        announce(first.app.state.settings, "v0010")
        for replica in (first, second):
            wait_for(lambda r=replica: r.info()["version"] == "v0010", 120, 0.2, "every replica on v0010")
            assert replica.search("python", top_k=3)["model_version"] == "v0010"
        registry.set_champion("v0010")
        with Server(settings_for(workdir, tiny_model, broker)) as late:
            assert late.info()["version"] == "v0010"


def test_startup_falls_back_to_version_zero_when_the_champion_is_broken(
        tmp_path: Path, tiny_model: Path, broker: EmbeddedBroker) -> None:
    settings = settings_for(tmp_path, tiny_model, broker, backend="torch")
    asyncio.run(load_catalogue(settings.store_url, SAMPLE_CATALOGUE))
    registry = Registry(settings.model_dir)
    write_version(registry, "v0001", tiny_model, garbage_weights)
    registry.set_champion("v0001")
    with Server(settings) as running:
        info = running.info()
        assert info["version"] == "v0" and "v0001" in info["failed_versions"]
        assert running.search("calculus", top_k=2)["model_version"] == "v0"

    pinned = write_version(Registry(tmp_path / "elsewhere"), "v0042", tiny_model)
    pinned_settings = settings_for(tmp_path, tiny_model, broker, backend="torch", cross_encoder_path=pinned)
    with Server(pinned_settings) as running:
        info = running.info()
        assert info["version"] == "v0042" and info["pinned"] is True and info["path"] == str(pinned)


def test_onnx_backends_score_like_torch(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "cross"
    CrossEncoder(str(tiny_model), num_labels=1, max_length=64).save_pretrained(str(folder))
    cross = load_cross_encoder(str(folder), 64, fallback=False)
    texts = [r.text for r in read_catalogue(SAMPLE_CATALOGUE)][:40]
    reference = cross_scores(cross, "machine learning tutorial", texts)
    onnx = load_onnx_cross_encoder(cross, folder, "onnx", tmp_path / "cache")
    np.testing.assert_allclose(cross_scores(onnx, "machine learning tutorial", texts), reference, atol=1e-4)
    exported = onnx.path.stat().st_mtime_ns
    again = load_onnx_cross_encoder(cross, folder, "onnx", tmp_path / "cache")
    assert again.path.stat().st_mtime_ns == exported  # cached, not exported twice
    int8 = load_onnx_cross_encoder(cross, folder, "onnx-int8", tmp_path / "cache")
    quantized = cross_scores(int8, "machine learning tutorial", texts)
    assert quantized.shape == reference.shape and np.all(np.isfinite(quantized))
    assert int8.path.stat().st_size < onnx.path.stat().st_size


@pytest.mark.slow
def test_benchmark_writes_every_key(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "rerank.json"
    subprocess.run([sys.executable, "-m", "bench.rerank", "--quick", "--base-model",
                    str(tiny_model), "--backend", "torch", "--out", str(out)],
                   check=True, timeout=240, cwd=ROOT, capture_output=True)
    result = json.loads(out.read_text())
    for key in ("pairs_per_s", "baseline_pairs_per_s", "v0_search_p50_ms_50", "v0_search_p95_ms_50"):
        assert result[key] > 0, key
    for n in (20, 50, 100):
        for p in ("p50", "p95", "p99"):
            assert result[f"search_{p}_ms_{n}"] > 0
        assert result["search"][str(n)]["mean_candidates"] > 0
    assert result["machine"]["cores"] >= 1 and result["settings"]["backend"] == "torch"
    assert result["served"]["backend"] == "torch"
    assert result["served"]["v0_kind"] == "bm25+dense+bm25_prf+dense_prf"
    assert result["head"] == "trained" and result["trained_head"]["pairs"] > 0
    assert result["served"]["kind"].endswith("+cross")
    assert result["served"]["rerank_depth"] == Settings().rerank_depth
    assert result["search_p95_ms_50_full_depth"] > 0 and result["search_p95_ms_traffic"] > 0
    assert 0 < result["cache_hit_rate_traffic"] <= 1  # the stream repeats its popular queries
    for key in ("ndcg10_delta_vs_fp32_full", "top10_identical_share"):  # Cranfield's: not in --quick
        assert key in result
