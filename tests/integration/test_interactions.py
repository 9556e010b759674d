"""Opens and their dwell, from HTTP to the aggregator's counts: validated like feedback, stored with
their event, counted once under retries, duplicates and a restart of the aggregator.

Real processes on free ports: the embedded broker, the collector and the aggregator. Inferences
are logged straight into the store, as the reranker would, so each test knows what was shown.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Iterator

import httpx
import pytest

from shared.evidence.outcomes import open_outcome
from shared.records import Inference, ShownResult
from shared.store import open_store
from tools.localstack import LocalStack, wait_for

INFERENCES = 60
SHOWN = 10


async def log_inferences(store_url: str) -> None:
    db = await open_store(store_url)
    try:
        await db.add_inferences([
            Inference(inference_id=f"inf-{i}", query=f"query {i % 7}", model_version="v0", use_reranker=True,
                      latency_ms=1.0, session_id=f"s{i % 5}",
                      results=[ShownResult(resource_id=f"res-{r}", rank=r + 1, first_stage_score=1.0)
                               for r in range(SHOWN)])
            for i in range(INFERENCES)])
    finally:
        await db.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"EDURANKER_TRAIN_MIN_NEW_FEEDBACK": "1000000", "EDURANKER_TRAIN_MIN_NEW_INTERACTIONS": "1000000",
           "EDURANKER_AGGREGATOR_RECOVER_AFTER_S": "2"}
    with LocalStack(tmp_path_factory.mktemp("interactions"), env=env) as running:
        running.start_broker()
        asyncio.run(log_inferences(running.settings.store_url))
        running.start(services=("collector", "aggregator"))
        yield running


def post(stack: LocalStack, payload: dict) -> httpx.Response:
    return httpx.post(f"{stack.url('collector')}/api/interactions", json=payload, timeout=30)


def stored(stack: LocalStack) -> dict[tuple[str, str, str | None], float | None]:
    async def read() -> list:
        db = await open_store(stack.settings.store_url)
        try:
            return await db.list_interactions(include_test=True)
        finally:
            await db.close()

    return {(i.inference_id, i.resource_id, i.session_id): i.dwell_s for i in asyncio.run(read())}


def expected_counts(truth: dict[tuple[str, str, str | None], float | None]) -> dict[str, int]:
    outcomes = [open_outcome(d) for d in truth.values()]
    return {"opens": len(truth), "satisfied": outcomes.count("satisfied"), "quick": outcomes.count("quick"),
            "since_last_training": len(truth)}


def test_refusals_say_what_to_change_and_store_nothing(stack: LocalStack) -> None:
    before = stored(stack)
    cases = [
        ({"inference_id": "nope", "resource_id": "res-1"}, 404, "not found"),
        ({"inference_id": "inf-1", "resource_id": "res-99"}, 422, "not among the"),
        ({"inference_id": "inf-1", "resource_id": "res-1", "dwell_s": -3}, 422, "dwell_s"),
        ({"inference_id": "inf-1", "resource_id": "res-1", "dwell_s": 10**9}, 422, "dwell_s"),
        ({"inference_id": "inf-1", "resource_id": "res-1", "url": "https://evil.example"}, 422, "extra"),
    ]
    for payload, status, message in cases:
        response = post(stack, payload)
        assert response.status_code == status, response.text
        assert message in response.text
    assert stored(stack) == before


def test_an_open_then_its_return_is_one_record_and_retries_change_nothing(stack: LocalStack) -> None:
    base = {"inference_id": "inf-50", "resource_id": "res-2", "session_id": "s0"}
    opened = post(stack, {**base, "request_id": "open-1"}).json()
    assert (opened["status"], opened["dwell_s"]) == ("created", None)
    assert post(stack, {**base, "request_id": "open-1"}).json()["status"] == "duplicate"
    assert post(stack, base).json()["status"] == "duplicate"  # opened again: still one open
    back = post(stack, {**base, "dwell_s": 42.0}).json()
    assert back == {**opened, "status": "updated", "dwell_s": 42.0, "previous_dwell_s": None}
    shorter = post(stack, {**base, "dwell_s": 3.0}).json()  # a late, shorter report keeps the longer stay
    assert (shorter["status"], shorter["dwell_s"]) == ("duplicate", 42.0)
    assert stored(stack)[("inf-50", "res-2", "s0")] == 42.0


def test_opens_are_counted_exactly_once_across_an_aggregator_restart(stack: LocalStack) -> None:
    rng = random.Random(3)
    truth = dict(stored(stack))
    sent: list[dict] = []
    for n in range(300):
        inference, resource = rng.randrange(INFERENCES - 10), rng.randrange(SHOWN)
        session = f"p{rng.randrange(4)}"
        payload = {"inference_id": f"inf-{inference}", "resource_id": f"res-{resource}",
                   "session_id": session, "request_id": f"r{n}"}
        if rng.random() < 0.7:
            payload["dwell_s"] = rng.choice([2.0, 15.0, 45.0, 300.0])
        sent.append(payload)
    batch = [sent[i:i + 50] for i in range(0, len(sent), 50)]
    for number, items in enumerate(batch):
        if number == 3:  # killed: what it had not committed is counted again, once, from the broker
            stack.stop_service("aggregator", sig=signal.SIGKILL)
            stack.start_service("aggregator")
            stack.wait_ready("aggregator", timeout_s=120)
        answer = httpx.post(f"{stack.url('collector')}/api/interactions/batch", json={"items": items},
                            timeout=30).json()
        assert answer["accepted"] == len(items)
        for payload in items:
            key = (payload["inference_id"], payload["resource_id"], payload["session_id"])
            old = truth.get(key, "absent")
            dwell = payload.get("dwell_s")
            if old == "absent" or (dwell is not None and (old is None or dwell > old)):
                truth[key] = dwell
        for payload in rng.sample(items, 10):  # client retries of some: duplicates, nothing new
            assert post(stack, payload).json()["status"] == "duplicate"
    assert stored(stack) == truth
    expected = expected_counts(truth)
    collector = httpx.get(f"{stack.url('collector')}/api/feedback/stats", timeout=30).json()["interactions"]
    assert {k: collector[k] for k in expected} == expected

    def counted() -> bool:
        return httpx.get(f"{stack.url('aggregator')}/stats", timeout=10).json()["interactions"] == expected

    wait_for(counted, 90, 0.3, f"the aggregator to count {expected}")
