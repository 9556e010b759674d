"""Users decide online, through the real broker, store and services: promotion, retirement, rollback.

The rankers are built so that what users prefer is certain: for each query, "relevant" are ten
results version 0 ranks 11th to 20th. A version whose feedback memory knows them ranks them
first (clearly better); one whose memory has them backwards ranks them last (clearly worse).
Simulated users like every relevant result they are shown and dislike irrelevant ones in the
top three, so every rated interleaved list is won by the ranker that placed more relevant ones.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.ml.ranking.pipeline import FeedbackMemory, PipelineSpec, version_zero
from shared.ml.registry import Registry
from shared.ml.runtime.loading import load_embedder
from shared.records import ModelVersion
from shared.store import open_store
from tests.conftest import tiny_stack
from tests.integration.conftest import chromium_context
from tools.localstack import LocalStack, wait_for

QUERIES = ["machine learning tutorial", "linear algebra for beginners", "python for data analysis",
           "introduction to neural networks", "calculus derivatives exercises", "statistics for science"]
KEY = "online-admin-key"
HEADERS = {"X-API-Key": KEY}


def open_stack(workdir: Path, tiny_model: Path) -> Iterator[LocalStack]:
    with tiny_stack(workdir, tiny_model, admin_keys=KEY, train_min_new_feedback=100_000,
                    experiment_share=1.0, experiment_watch_share=1.0, experiment_min_impressions=20,
                    experiment_max_impressions=2_000, experiment_watch_impressions=2_000,
                    watch_interval_s=0.5) as running:
        yield running


@pytest.fixture
def stack(workdir: Path, tiny_model: Path) -> Iterator[LocalStack]:
    yield from open_stack(workdir, tiny_model)


class Users:
    """The simulated people, and the two kinds of version they judge."""

    def __init__(self, stack: LocalStack, tiny_model: Path) -> None:
        self.stack = stack
        self.client = httpx.Client(timeout=60)
        self.people = 0  # each search is a new person: the test counts one repeated search once
        self.relevant = {}
        for query in QUERIES:
            ranked = self.search(query, top_k=20)["results"]
            assert len(ranked) == 20, query
            self.relevant[query] = {r["resource_id"] for r in ranked[10:]}
        self.irrelevant = {q: {r["resource_id"] for r in self.search(q, top_k=10)["results"]}
                           for q in QUERIES}
        self.embedder = load_embedder(str(tiny_model), 64)

    def search(self, query: str, top_k: int = 10) -> dict:
        response = self.client.post(f"{self.stack.url('reranker')}/api/reranking/search-with-reranking",
                                    json={"query_text": query, "use_reranker": True, "top_k": top_k})
        assert response.status_code == 200, response.text
        return response.json()

    def play(self, searches: int) -> int:
        """Searches and rates like a person who knows what is relevant; returns feedback sent."""
        sent = 0
        for n in range(searches):
            query = QUERIES[n % len(QUERIES)]
            self.people += 1
            body = self.search(query)
            for result in body["results"]:
                relevant = result["resource_id"] in self.relevant[query]
                if not relevant and result["rank"] > 3:
                    continue
                answer = self.client.post(f"{self.stack.url('collector')}/api/feedback", json={
                    "inference_id": body["inference_id"], "resource_id": result["resource_id"],
                    "feedback": "like" if relevant else "dislike", "user_id": f"user-{self.people}"})
                assert answer.status_code == 200, answer.text
                sent += 1
        return sent

    def version(self, name: str, good: bool) -> None:
        """A registry version: version 0 plus a feedback memory that knows (or inverts) relevance."""
        pairs = [(q, r, 1 if good else 0) for q in QUERIES for r in self.relevant[q]]
        pairs += [(q, r, 0 if good else 1) for q in QUERIES for r in self.irrelevant[q]]
        memory = FeedbackMemory.build(self.embedder, pairs)
        zero = version_zero(self.stack.settings)
        spec = PipelineSpec(**{**zero.model_dump(), "version": name,
                               "weights": {**zero.weights, "memory": 6.0}})

        def write(folder: Path) -> None:
            memory.save(folder)
            spec.save(folder)

        Registry(self.stack.settings.model_dir).write_version(name, write)

        async def index() -> None:
            store = await open_store(self.stack.settings.store_url)
            try:
                await store.save_model_version(ModelVersion(version=name, location=name, status="rejected",
                                                            base_model=spec.base_model))
            finally:
                await store.close()

        asyncio.run(index())

    def admin(self, method: str, path: str) -> httpx.Response:
        return self.client.request(method, f"{self.stack.url('trainer')}/admin{path}", headers=HEADERS)

    def experiments(self) -> list[dict]:
        return self.admin("GET", "/experiments").json()["experiments"]

    def served(self) -> dict:
        return self.client.get(f"{self.stack.url('reranker')}/api/reranking/info-modele").json()

    def play_until(self, condition: object, what: str, rounds: int = 40) -> None:
        for _ in range(rounds):
            self.play(len(QUERIES))
            if condition():  # type: ignore[operator]
                return
        raise AssertionError(f"users did not get to: {what}; experiments: {self.experiments()[:2]}")

    def serving(self, champion: str, challenger: str | None) -> bool:
        info = self.served()
        experiment = info.get("experiment")
        return info["version"] == champion and (experiment or {}).get("challenger") == challenger


def test_users_promote_a_better_challenger_retire_a_worse_one_and_roll_back_a_bad_champion(
        stack: LocalStack, tiny_model: Path) -> None:
    users = Users(stack, tiny_model)
    users.version("v0001", good=True)
    users.version("v0002", good=False)
    users.version("v0003", good=False)

    # A clearly better challenger: interleaved with version 0 on every search, then promoted.
    started = users.admin("POST", "/versions/v0001/challenge")
    assert started.status_code == 200, started.text
    wait_for(lambda: users.serving("v0", "v0001"), 60, 0.3, "every search interleaving v0 and v0001")
    body = users.search(QUERIES[0])
    assert body["model_version"] == "v0" and [r["rank"] for r in body["results"]] == list(range(1, 11))
    assert {"challenger.fused", "challenger.memory"} <= set(body["results"][0]["scores"])
    users.play_until(lambda: users.experiments()[-1]["status"] == "ended", "a decision on v0001")
    first = users.experiments()[-1]
    assert first["decision"] == "promote" and first["challenger"] == "v0001", first
    facts = first["evidence"]
    assert facts["challenger_wins"] > facts["champion_wins"] and facts["p_value"] < 0.05
    assert facts["impressions"] >= 20 and facts["queries"]["challenger"] >= 3
    # The previous champion stays on as the comparison; users keep the new one.
    wait_for(lambda: users.serving("v0001", "v0"), 60, 0.3, "v0001 served, watched against v0")
    watch = users.experiments()[0]
    assert watch["kind"] == "watch" and watch["status"] == "running" and watch["challenger"] == "v0"
    users.play_until(lambda: users.experiments()[0]["status"] == "ended", "the end of the watch")
    assert users.experiments()[0]["decision"] == "keep"

    # A clearly worse challenger is retired; the champion stays.
    assert users.admin("POST", "/versions/v0002/challenge").status_code == 200
    wait_for(lambda: users.serving("v0001", "v0002"), 60, 0.3, "v0002 tried against v0001")
    users.play_until(lambda: users.experiments()[0]["status"] == "ended", "a decision on v0002")
    assert users.experiments()[0]["decision"] == "retire"
    wait_for(lambda: users.serving("v0001", None), 60, 0.3, "v0001 alone")
    statuses = {v["version"]: v["status"] for v in users.admin("GET", "/versions").json()["versions"]}
    assert statuses == {"v0001": "promoted", "v0002": "rejected", "v0003": "rejected"}

    # An operator promotes a bad version: users ask for the previous champion back, and get it.
    assert users.admin("POST", "/versions/v0003/promote").status_code == 200
    wait_for(lambda: users.serving("v0003", "v0001"), 60, 0.3, "v0003 served, watched against v0001")
    users.play_until(lambda: users.experiments()[0]["status"] == "ended", "a decision on v0003")
    rollback = users.experiments()[0]
    assert rollback["kind"] == "watch" and rollback["decision"] == "rollback", rollback
    wait_for(lambda: users.serving("v0001", None), 60, 0.3, "v0001 back")
    statuses = {v["version"]: v["status"] for v in users.admin("GET", "/versions").json()["versions"]}
    assert statuses["v0003"] == "retired" and statuses["v0001"] == "promoted"
    metrics = users.client.get(f"{stack.url('trainer')}/metrics").text
    assert 'eduranker_model_rollbacks_total{trigger="automatic"} 1.0' in metrics
    aggregator = users.client.get(f"{stack.url('aggregator')}/metrics").text
    assert 'eduranker_experiment_decisions_total{decision="rollback"} 1.0' in aggregator
    log = stack.log("trainer").read_text()
    assert "event=rolled_back trigger=automatic from=v0003 to=v0001" in log


def test_restarts_mid_experiment_count_nothing_twice_and_lose_nothing(stack: LocalStack,
                                                                      tiny_model: Path) -> None:
    """A challenger users cannot tell from the champion (the same rankings): the experiment keeps
    running while the aggregator is killed and a reranker restarted, and its live tally must still
    be exactly the store's recount."""
    users = Users(stack, tiny_model)
    add_twin(stack)
    assert users.admin("POST", "/versions/v0001/challenge").status_code == 200
    wait_for(lambda: users.serving("v0", "v0001"), 60, 0.3, "v0 interleaved with its twin")
    sent = users.play(12)
    stack.stop_service("aggregator", signal.SIGKILL)
    sent += users.play(12)  # counted after the restart, from the broker
    stack.start_service("aggregator")
    stack.wait_ready("aggregator")
    stack.stop_service("reranker")
    stack.start_service("reranker")
    stack.wait_ready("reranker")
    assert users.serving("v0", "v0001")  # the restarted replica joined the experiment at once
    sent += users.play(12)

    def agreed() -> dict | None:
        stats = users.client.get(f"{stack.url('aggregator')}/stats").json()
        stored = users.client.get(f"{stack.url('collector')}/api/feedback/stats").json()
        live, recount = stats["experiment"], stored["experiment"]
        if stats["counts"]["total"] != stored["feedback"]["total"] or live is None or recount is None:
            return None
        return live if live["wins"] == recount["wins"] and live["impressions"] == recount["impressions"] \
            else None

    live = wait_for(agreed, 60, 0.5, "the aggregator's tally to equal the store's recount")
    assert stats_total(users) == sent
    assert live["impressions"] == 36  # every search of the users, none of the setup before it
    assert sum(live["wins"].values()) == 36
    assert live["verdict"]["decision"] is None

    assert users.admin("POST", "/experiments/stop").status_code == 200
    wait_for(lambda: users.serving("v0", None), 60, 0.3, "v0 alone")
    assert users.experiments()[0]["decision"] == "stopped"


def stats_total(users: Users) -> int:
    return users.client.get(f"{users.stack.url('aggregator')}/stats").json()["counts"]["total"]


def add_twin(stack: LocalStack) -> None:
    """v0001: version 0 itself under another name, so users cannot tell the two apart."""
    zero = version_zero(stack.settings)

    def twin(folder: Path) -> None:
        PipelineSpec(**{**zero.model_dump(), "version": "v0001"}).save(folder)

    Registry(stack.settings.model_dir).write_version("v0001", twin)

    async def index() -> None:
        store = await open_store(stack.settings.store_url)
        try:
            await store.save_model_version(ModelVersion(version="v0001", location="v0001", status="rejected",
                                                        base_model=zero.base_model))
        finally:
            await store.close()

    asyncio.run(index())


def test_the_search_page_shows_the_running_experiment_and_the_last_decision(
        stack: LocalStack, tiny_model: Path, chromium: str, tmp_path: Path) -> None:
    users = Users(stack, tiny_model)
    add_twin(stack)
    assert users.admin("POST", "/versions/v0001/challenge").status_code == 200
    wait_for(lambda: users.serving("v0", "v0001"), 60, 0.3, "v0 interleaved with its twin")
    users.play(12)

    def counted() -> dict | None:
        live = users.client.get(f"{stack.url('aggregator')}/stats").json()["experiment"]
        return live if live and live["impressions"] == 12 and sum(live["wins"].values()) == 12 else None

    live = wait_for(counted, 60, 0.5, "the aggregator's tally of the 12 searches")
    from playwright.sync_api import expect

    with chromium_context(chromium, tmp_path / "profile") as browser:
        page = browser.new_page()
        page.goto(f"{stack.url('reranker')}/")
        expect(page.locator("#experiment")).to_be_visible(timeout=15_000)
        expect(page.locator("#experiment-what")).to_contain_text("the challenger v0001 with the champion v0")
        expect(page.locator("#experiment-impressions")).to_have_text("12")
        ties = page.locator("#experiment-ties")
        expect(ties).to_have_text(str(live["wins"]["tie"]))
        expect(page.locator("#experiment-none")).to_be_hidden()
        assert users.admin("POST", "/experiments/stop").status_code == 200
        wait_for(lambda: users.serving("v0", None), 60, 0.3, "v0 alone")
        assert users.experiments()[0]["decision"] == "stopped"
        expect(page.locator("#experiment-none")).to_be_visible(timeout=15_000)
        expect(page.locator("#experiment-last")).to_contain_text("Last decision: stopped (v0001 against v0)")
        page.close()
