"""Removing and hiding resources through the real services, on both store backends: two reranker
replicas and the collector (uvicorn, real HTTP) on one store, the real broker.

A removed or hidden resource is gone from every replica's search within seconds, feedback on it is
refused (410), training leaves it out; a hidden one comes back as it was. `load-catalogue --replace`
makes the catalogue exactly a file. MongoDB is the suite's (tests/mongodb.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.collector.app import create_app as create_collector
from services.reranker.app import create_app as create_reranker
from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker, free_port
from shared.ml.training.run import read_training_data
from shared.records import Resource, text_hash
from shared.settings import Settings
from shared.store import Store, open_store
from tests.conftest import ROOT, SAMPLE_CATALOGUE
from tests.integration.served import Served
from tests.mongodb import database_url
from tools.localstack import wait_for

SEARCH = "/api/reranking/search-with-reranking"
SAMPLE = [Resource.model_validate_json(line) for line in SAMPLE_CATALOGUE.read_text().splitlines()
          if line.strip()][:60]
FOLLOW_S = 5.0
"""A removal must reach every replica within this (the watcher polls every 0.5 s here)."""


def in_store(store_url: str, action: Callable[[Store], Any]) -> Any:
    async def run() -> Any:
        store = await open_store(store_url)
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.fixture(params=["sqlite", "mongodb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'eduranker.db'}"
        return
    url = database_url(request.getfixturevalue("mongodb"))
    yield url
    in_store(url, lambda store: store.db.client.drop_database(store.db.name))


class Services:
    """Two reranker replicas and the collector on one store."""

    def __init__(self, store_url: str, tmp_path: Path, tiny_model: Path, broker: EmbeddedBroker) -> None:
        def settings() -> Settings:
            return Settings(store_url=store_url, model_dir=tmp_path / "models",
                            kafka_bootstrap=broker.bootstrap, base_model=str(tiny_model),
                            embedding_model=str(tiny_model),
                            reranker_port=free_port(), collector_port=free_port(), watch_interval_s=0.5)

        self.settings = settings()
        ensure_topics(self.settings)
        in_store(store_url, lambda store: store.upsert_resources(SAMPLE))
        self.stack = ExitStack()
        first, second, collector = settings(), settings(), settings()
        self.first, self.second = (
            self.stack.enter_context(Served(create_reranker(s), s.reranker_port, f"reranker-{n}"))
            for n, s in enumerate((first, second), start=1))
        self.collector = self.stack.enter_context(
            Served(create_collector(collector), collector.collector_port, "collector"))

    def search(self, replica: Served, query: str, **body: Any) -> dict:
        response = httpx.post(replica.url + SEARCH, json={"query_text": query, "top_k": 20, **body},
                              timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def shown(self, replica: Served, query: str) -> set[str]:
        return {r["resource_id"] for r in self.search(replica, query)["results"]}

    def feedback(self, inference_id: str, resource_id: str, label: str = "like") -> httpx.Response:
        return httpx.post(self.collector.url + "/api/feedback", timeout=30, json={
            "inference_id": inference_id, "resource_id": resource_id, "feedback": label, "user_id": "u1"})

    def admin(self, method: str, path: str) -> httpx.Response:
        return httpx.request(method, self.first.url + path, timeout=30)

    def pairs(self) -> set[str]:
        data = in_store(self.settings.store_url, lambda store: read_training_data(store, include_test=False))
        return {p.resource_id for p in data.pairs}


@pytest.fixture
def services(store_url: str, tmp_path: Path, tiny_model: Path, broker: EmbeddedBroker) -> Iterator[Services]:
    running = Services(store_url, tmp_path, tiny_model, broker)
    with running.stack:
        yield running


def followed(services: Services, query: str, resource_id: str, present: bool) -> float:
    """Seconds until the second replica, which learns of changes from the store only, agrees."""
    started = time.perf_counter()
    wait_for(lambda: (resource_id in services.shown(services.second, query)) == present, FOLLOW_S, 0.05,
             f"the second replica to {'show' if present else 'drop'} {resource_id}")
    return time.perf_counter() - started


def test_removed_and_hidden_resources_leave_every_replica_and_take_no_feedback(services: Services) -> None:
    query = "learning"
    search = services.search(services.first, query)
    removed, hidden, kept = (r["resource_id"] for r in search["results"][:3])
    assert services.feedback(search["inference_id"], hidden).status_code == 200
    assert services.feedback(search["inference_id"], kept).status_code == 200
    assert {hidden, kept} <= services.pairs()
    wait_for(lambda: (services.first.app.state.holder.info()["embedding"] or {}).get("complete"), 60, 0.2,
             "every vector in")
    model_id = services.first.app.state.holder.info()["embedding"]["model_id"]
    text = next(r.text for r in SAMPLE if r.id == removed)

    answer = services.admin("DELETE", f"/api/resources/{removed}")
    assert answer.status_code == 200 and answer.json() == {"resource_id": removed, "state": "removed",
                                                          "changed": True}
    assert removed not in services.shown(services.first, query)  # this replica at once
    assert followed(services, query, removed, present=False) < FOLLOW_S
    refused = services.feedback(search["inference_id"], removed)
    assert refused.status_code == 410 and "was removed from the catalogue" in refused.json()["detail"]
    key = text_hash(text)
    assert in_store(services.settings.store_url, lambda store: store.get_vectors(model_id, [key])) == {}
    assert "was removed" in services.admin("GET", f"/api/resources/{removed}").json()["detail"]
    assert services.admin("DELETE", f"/api/resources/{removed}").status_code == 404
    assert services.admin("DELETE", "/api/resources/never-there").status_code == 404

    assert services.admin("POST", f"/api/resources/{hidden}/hide").json()["changed"] is True
    assert hidden not in services.shown(services.first, query)
    followed(services, query, hidden, present=False)
    refused = services.feedback(search["inference_id"], hidden, "dislike")
    assert refused.status_code == 410 and "is hidden" in refused.json()["detail"]
    assert services.admin("GET", f"/api/resources/{hidden}").status_code == 404
    assert hidden not in services.pairs() and kept in services.pairs()  # training leaves it out

    assert services.admin("POST", f"/api/resources/{hidden}/unhide").json()["changed"] is True
    assert hidden in services.shown(services.first, query)
    followed(services, query, hidden, present=True)
    again = services.search(services.first, query)
    assert services.feedback(again["inference_id"], hidden).status_code == 200
    assert hidden in services.pairs()
    assert services.admin("GET", f"/api/resources/{hidden}").json()["id"] == hidden


def test_load_catalogue_replace_makes_the_catalogue_exactly_the_file(services: Services,
                                                                    tmp_path: Path) -> None:
    keep = SAMPLE[:40]
    changed = keep[0].model_copy(update={"title": "Quaternions for game developers"})
    hidden = keep[1].id
    assert services.admin("POST", f"/api/resources/{hidden}/hide").status_code == 200
    catalogue = tmp_path / "catalogue.jsonl"
    catalogue.write_text("".join(json.dumps(r.model_dump()) + "\n" for r in [changed, *keep[1:]]))

    def load(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tools.cli", "load-catalogue", "--replace", str(path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "EDURANKER_STORE_URL": services.settings.store_url})

    done = load(catalogue)
    assert done.returncode == 0, done.stderr
    assert f"loaded 40 resources from {catalogue}, removed 20 not in it" in done.stdout
    ids = in_store(services.settings.store_url, lambda store: store.resource_ids())
    assert sorted(ids) == sorted(r.id for r in keep)
    live = in_store(services.settings.store_url, lambda store: store.list_resources())
    assert {r.id for r in live} == {r.id for r in keep} - {hidden}  # a hidden one stays hidden
    gone = SAMPLE[50]
    for replica in (services.first, services.second):  # each follows on its own clock
        wait_for(lambda replica=replica: replica.app.state.holder.info()["catalogue_size"] == 39,
                 FOLLOW_S, 0.1, "every replica to follow the replacement")
        assert gone.id not in services.shown(replica, gone.title)
        assert changed.id in services.shown(replica, "quaternions")

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    refused = load(empty)
    assert refused.returncode == 2 and "would remove the whole catalogue" in refused.stderr
    assert len(in_store(services.settings.store_url, lambda store: store.resource_ids())) == 40
