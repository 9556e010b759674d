"""The store's server killed mid-traffic, on the MongoDB backend: a MongoDB-wire-compatible server of
this module's own (SecantusDB, tests/mongodb.py), killed and started again on the same data.

Real processes on loopback: the embedded broker, the collector and the aggregator. Inferences are
logged straight into the store, as the reranker would. Users rate results from threads, each
feedback with a request id and retried until answered, so "accepted" is exactly what the store
must hold once the database is back, every accepted feedback counted once.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.test_feedback import (
    SHOWN,
    aggregator_stats,
    collector_feedback,
    log_inferences,
    store_labels,
    wait_until_equal,
)
from tests.mongodb import SecantusDB, database_url
from tools.localstack import LocalStack, wait_for

pytestmark = pytest.mark.slow
INFERENCES = 50


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusDB]:
    with SecantusDB(tmp_path_factory.mktemp("killed-mongodb") / "data", sync_on_commit=True) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database: SecantusDB) -> Iterator[LocalStack]:
    env = {"EDURANKER_STORE_URL": database_url(database.url),
           "EDURANKER_TRAIN_MIN_NEW_FEEDBACK": "1000000", "EDURANKER_AGGREGATOR_RECOVER_AFTER_S": "2"}
    with LocalStack(tmp_path_factory.mktemp("database-faults"), env=env) as running:
        running.start_broker()
        asyncio.run(log_inferences(running.settings.store_url, INFERENCES))
        running.start(services=("collector", "aggregator"))
        yield running


class Users:
    """Threads that rate shown results and retry a feedback until it is answered (503 included)."""

    def __init__(self, stack: LocalStack, count: int = 3) -> None:
        self.url = stack.url("collector") + "/api/feedback"
        self.accepted: dict[tuple[int, int, str], str] = {}
        self.answers: Counter[int] = Counter()
        self.last: dict[int, str] = {}  # each thread's last answer, said when a wait fails
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rate, args=(n,), daemon=True) for n in range(count)]

    def __enter__(self) -> Users:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def wait_accepted(self, more: int, timeout_s: float = 90) -> None:
        target = len(self.accepted) + more
        try:
            wait_for(lambda: len(self.accepted) >= target, timeout_s, 0.05, f"{more} more accepted feedbacks")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; answers {dict(self.answers)}; last {self.last}") from exc

    def _rate(self, n: int) -> None:
        rng, user = random.Random(n), f"user-{n}"
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                key = (rng.randrange(INFERENCES), rng.randrange(SHOWN), user)
                label = rng.choice(("like", "dislike"))
                payload = {"inference_id": f"inf-{key[0]}", "resource_id": f"res-{key[1]}", "user_id": user,
                           "feedback": label, "request_id": uuid.uuid4().hex}
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    try:
                        response = client.post(self.url, json=payload)
                        status, said = response.status_code, response.text[:300]
                    except httpx.TransportError as exc:
                        status, said = 0, repr(exc)
                    with self._lock:
                        self.answers[status] += 1
                        self.last[n] = f"{time.strftime('%X')} {payload['request_id'][:8]} {status} {said}"
                        if status == 200:
                            self.accepted[key] = label
                    if status == 200:
                        break
                    time.sleep(0.2)  # 503: the store is away; retry, as Retry-After says


def ready(stack: LocalStack) -> int:
    return httpx.get(stack.url("collector") + "/ready", timeout=30).status_code


def test_database_killed_mid_traffic_feedback_answers_503_loses_nothing_and_recovers(
        stack: LocalStack, database: SecantusDB) -> None:
    with Users(stack) as users:
        users.wait_accepted(20)
        database.kill()
        wait_for(lambda: users.answers[503] > 0, 90, 0.1, "feedback answered 503 while the database is down")
        wait_for(lambda: ready(stack) == 503, 60, 0.2, "the collector to say it is not ready")
        database.start()
        wait_for(lambda: ready(stack) == 200, 90, 0.2, "the collector ready again")
        users.wait_accepted(20)
    assert set(users.answers) == {200, 503}, users.answers
    assert store_labels(stack) == users.accepted, "the store holds exactly the feedback answered 200"
    expected = collector_feedback(stack)
    assert expected["total"] == len(users.accepted)
    wait_until_equal(lambda: aggregator_stats(stack)["feedback"], expected, 90, "the aggregator's counts")
