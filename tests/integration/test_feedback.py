"""Feedback from HTTP to the aggregator's counts, exact under duplicates, restarts and outages.

Real processes on free ports: the embedded broker (this module's own, so it can be stopped),
the collector and the aggregator. Inferences are logged straight into the store, as the
reranker would, so that each test knows exactly which results were shown.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.collector.intake import ActionWriter
from shared.records import Inference, ShownResult, utcnow
from shared.store import Store, StoreUnavailableError, open_store
from tests.integration.test_store_contract import make_feedback, store  # noqa: F401 - the backends
from tools.localstack import LocalStack, wait_for

INFERENCES = 200
SHOWN = 10
USERS = ("ana", "ben", None)


def version_of(inference: int) -> str:
    return f"v{inference % 3}"


async def log_inferences(store_url: str, count: int) -> None:
    db = await open_store(store_url)
    try:
        await db.add_inferences([
            Inference(inference_id=f"inf-{i}", query=f"query {i}", model_version=version_of(i),
                      use_reranker=True, latency_ms=1.0,
                      results=[ShownResult(resource_id=f"res-{r}", rank=r + 1, first_stage_score=1.0)
                               for r in range(SHOWN)])
            for i in range(count)
        ])
    finally:
        await db.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {
        "EDURANKER_TRAIN_MIN_NEW_FEEDBACK": "1000000",  # counting only: no training here
        "EDURANKER_AGGREGATOR_RECOVER_AFTER_S": "2",
    }
    with LocalStack(tmp_path_factory.mktemp("feedback"), env=env) as running:
        running.start_broker()
        asyncio.run(log_inferences(running.settings.store_url, INFERENCES))
        running.start(services=("collector", "aggregator"))
        yield running


class Truth:
    """What the store must hold: one label per (inference, resource, user), the last one given."""

    def __init__(self) -> None:
        self.labels: dict[tuple[int, int, str | None], str] = {}
        self.requests: set[str] = set()

    def expect(self, key: tuple[int, int, str | None], label: str, request_id: str | None = None) -> str:
        """The status the collector must answer; a request id seen before is a no-op."""
        if request_id in self.requests:
            return "duplicate"
        if request_id:
            self.requests.add(request_id)
        previous = self.labels.get(key)
        self.labels[key] = label
        return "created" if previous is None else "duplicate" if previous == label else "updated"

    def feedback_stats(self) -> dict:
        labels = Counter(self.labels.values())
        versions: dict[str, Counter] = {}
        for (inference, _, _), label in self.labels.items():
            versions.setdefault(version_of(inference), Counter())[label] += 1
        total = len(self.labels)
        return {
            "total": total, "like": labels["like"], "dislike": labels["dislike"],
            "like_ratio": round(labels["like"] / total, 6) if total else None,
            "by_model_version": {
                v: {"total": c["like"] + c["dislike"], "like": c["like"], "dislike": c["dislike"]}
                for v, c in sorted(versions.items())
            },
            "since_last_training": {"total": total, "like": labels["like"], "dislike": labels["dislike"]},
            "last_training_at": None,
        }


def body(key: tuple[int, int, str | None], label: str, **extra: object) -> dict:
    inference, resource, user = key
    payload = {"inference_id": f"inf-{inference}", "resource_id": f"res-{resource}", "feedback": label}
    if user:
        payload["user_id"] = user
    return {**payload, **extra}


def post(stack: LocalStack, payload: dict) -> httpx.Response:
    return httpx.post(f"{stack.url('collector')}/api/feedback", json=payload, timeout=30)


def collector_feedback(stack: LocalStack) -> dict:
    stats = httpx.get(f"{stack.url('collector')}/api/feedback/stats", timeout=30).json()["feedback"]
    stats.pop("test")
    return stats


def aggregator_stats(stack: LocalStack) -> dict:
    return httpx.get(f"{stack.url('aggregator')}/stats", timeout=10).json()


def store_labels(stack: LocalStack) -> dict[tuple[int, int, str | None], str]:
    async def read() -> list:
        db = await open_store(stack.settings.store_url)
        try:
            return await db.list_feedback(include_test=True)
        finally:
            await db.close()

    stored = asyncio.run(read())
    return {(int(f.inference_id[4:]), int(f.resource_id[4:]), f.user_id): f.label for f in stored}


def metric(stack: LocalStack, service: str, name: str, client: httpx.Client | None = None) -> float:
    """`client`: one already connected, for a poll that must not wait behind a burst's connections."""
    url = f"{stack.url(service)}/metrics"
    answer = client.get(url) if client is not None else httpx.get(url, timeout=10)
    for line in answer.text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until_equal(read: Callable[[], dict], expected: dict, timeout_s: float, what: str) -> dict:
    """Polls `read` until it returns `expected`; on timeout, says what differs.

    A service that does not answer is not yet there, not wrong: the aggregator restarts itself in
    place when a restarted broker leaves it stuck, and its web server is down for those seconds.
    """
    deadline = time.monotonic() + timeout_s
    value: dict = {}
    while True:
        try:
            value = read()
        except httpx.TransportError as exc:
            value = {"unreachable": repr(exc)}
        if value == expected:
            return value
        if time.monotonic() > deadline:
            diff = {k: (value.get(k), v) for k, v in expected.items() if value.get(k) != v}
            last = f"; last: {value['unreachable']}" if "unreachable" in value else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: "
                                 f"(got, expected) {diff}{last}")
        time.sleep(0.3)


def assert_all_agree(stack: LocalStack, truth: Truth, timeout_s: float = 60) -> None:
    """The store, the collector's stats and the aggregator's counts all say exactly what was sent."""
    expected = truth.feedback_stats()
    assert store_labels(stack) == truth.labels
    assert collector_feedback(stack) == expected
    wait_until_equal(lambda: aggregator_stats(stack)["feedback"], expected, timeout_s, "the counts")


def test_refusals_say_what_to_change_and_store_nothing(stack: LocalStack) -> None:
    before = collector_feedback(stack)
    cases = [
        ({"inference_id": "nope", "resource_id": "res-1", "feedback": "like"}, 404, "not found"),
        ({"inference_id": "inf-199", "resource_id": "res-99", "feedback": "like"}, 422, "not among the"),
        ({"inference_id": "inf-199", "resource_id": "res-1", "feedback": "love"}, 422, "'like' or 'dislike'"),
        ({"inference_id": "inf-199", "resource_id": "res-1", "feedback": "like", "extra": 1}, 422, "extra"),
    ]
    for payload, status, message in cases:
        response = post(stack, payload)
        assert response.status_code == status, response.text
        assert message in response.text
    # Every identifier, one rule (shared/records.py `Identifier`): said in the same words for each.
    for field in ("inference_id", "resource_id", "user_id", "session_id", "request_id"):
        response = post(stack, {**body((199, 1, None), "like"), field: "id\x00with\x1bcontrol"})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", field]
        assert error["msg"] == ("Value error, an id must be printable text: U+0000 at position 2 is a "
                                "control character; remove it")
    too_many = {"items": [body((199, 1, None), "like")] * 501}
    response = httpx.post(f"{stack.url('collector')}/api/feedback/batch", json=too_many, timeout=30)
    assert response.status_code == 422 and "500" in response.text
    assert collector_feedback(stack) == before


def test_retries_duplicates_and_label_changes(stack: LocalStack) -> None:
    key = (198, 3, "zoe")
    first = post(stack, body(key, "like", request_id="click-1")).json()
    assert first["status"] == "created"
    assert post(stack, body(key, "like", request_id="click-1")).json() == {**first, "status": "duplicate"}
    changed = post(stack, body(key, "dislike", request_id="click-2")).json()
    assert changed == {**first, "status": "updated", "label": "dislike", "previous_label": "like"}
    # A late retry of the first click must not flip the label back.
    late = post(stack, body(key, "like", request_id="click-1")).json()
    assert (late["status"], late["label"]) == ("duplicate", "dislike")

    batch = {"items": [body((198, 4, "zoe"), "like"), body((198, 4, "zoe"), "dislike"),
                       {"inference_id": "nope", "resource_id": "res-1", "feedback": "like"},
                       body((198, 42, "zoe"), "like")]}
    response = httpx.post(f"{stack.url('collector')}/api/feedback/batch", json=batch, timeout=30).json()
    assert response["accepted"] == 2
    results = response["results"]
    assert [(r["index"], r["ok"], r["status_code"]) for r in results] == [
        (0, True, 200), (1, True, 200), (2, False, 404), (3, False, 422)]
    assert (results[1]["result"]["status"], results[1]["result"]["previous_label"]) == ("updated", "like")
    assert "not among the results" in results[3]["error"]
    assert store_labels(stack)[(198, 4, "zoe")] == "dislike"


@pytest.fixture(scope="module")
def truth(stack: LocalStack) -> Truth:
    """Everything sent so far in this module, as the store must hold it."""
    known = Truth()
    known.labels.update(store_labels(stack))
    return known


Operation = tuple[tuple[int, int, str | None], str, str | None]


async def send_all(stack: LocalStack, ops: list[Operation], truth: Truth, workers: int = 16) -> Counter[str]:
    """Sends operations, one worker per group of results, so that changes to one result keep their order.

    Half the groups go one request at a time, half in small batches. Every answer is checked
    against the status the truth says it must have.
    """
    groups: dict[int, list[Operation]] = {}
    for op in ops:
        key = op[0]
        groups.setdefault((key[0] * SHOWN + key[1]) % workers, []).append(op)
    statuses: Counter[str] = Counter()
    url = stack.url("collector")

    def payload(op: Operation) -> dict:
        key, label, request_id = op
        return body(key, label, **({"request_id": request_id} if request_id else {}))

    async def work(n: int, group: list[Operation], client: httpx.AsyncClient) -> None:
        if n % 2:
            for op in group:
                expected = truth.expect(*op)
                response = await client.post(f"{url}/api/feedback", json=payload(op))
                assert response.status_code == 200, response.text
                assert response.json()["status"] == expected, op
                statuses[expected] += 1
            return
        for start in range(0, len(group), 7):
            chunk = group[start:start + 7]
            expected = [truth.expect(*op) for op in chunk]
            items = [payload(op) for op in chunk]
            response = await client.post(f"{url}/api/feedback/batch", json={"items": items})
            assert response.status_code == 200, response.text
            got = [r["result"]["status"] for r in response.json()["results"]]
            assert got == expected, chunk
            statuses.update(got)

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(work(n, group, client) for n, group in groups.items()))
    return statuses


def operations(rng: random.Random, count: int, inferences: range) -> list[Operation]:
    """New feedback, the same click again, label changes, and client retries, mixed."""
    ops: list[Operation] = []
    while len(ops) < count:
        roll = rng.random()
        if ops and roll < 0.10:
            ops.append(rng.choice(ops))  # a client retry: same request id, or the same click again
        elif ops and roll < 0.25:
            key, label, _ = rng.choice(ops)
            ops.append((key, "dislike" if label == "like" else "like", f"req-{len(ops)}"))
        else:
            key = (rng.choice(inferences), rng.randrange(SHOWN), rng.choice(USERS))
            request_id = f"req-{len(ops)}" if roll < 0.8 else None
            ops.append((key, rng.choice(("like", "like", "dislike")), request_id))
    return ops


def test_exact_counts_after_1000_feedbacks(stack: LocalStack, truth: Truth) -> None:
    ops = operations(random.Random(4), 1000, range(0, 150))
    statuses = asyncio.run(send_all(stack, ops, truth))
    assert sum(statuses.values()) == 1000
    assert statuses["duplicate"] > 50 and statuses["updated"] > 50 and statuses["created"] > 500
    assert_all_agree(stack, truth)
    stats = aggregator_stats(stack)
    assert set(stats["feedback"]["by_model_version"]) == {"v0", "v1", "v2"}
    assert stats["dedup"]["entries"] >= statuses["created"] + statuses["updated"]


def test_aggregator_restart_keeps_its_counts(stack: LocalStack, truth: Truth) -> None:
    assert_all_agree(stack, truth)
    before = aggregator_stats(stack)
    stack.stop_service("aggregator")
    stack.start_service("aggregator")
    stack.wait_ready("aggregator", timeout_s=120)
    # The changelog's last writes may not be restored; the outbox check counts what they held.
    wait_until_equal(lambda: aggregator_stats(stack)["feedback"], before["feedback"], 30,
                     "the counts from before the restart")
    assert aggregator_stats(stack)["origin"] == before["origin"], "restored from the changelog, not rebuilt"

    ops = operations(random.Random(5), 60, range(150, 170))
    asyncio.run(send_all(stack, ops, truth, workers=4))
    assert_all_agree(stack, truth)


def test_broker_outage_loses_nothing_and_counts_once(stack: LocalStack, truth: Truth) -> None:
    """The broker (memory only) stops while feedback flows, and comes back empty."""
    assert stack.broker is not None
    stop = threading.Event()
    sent: list[tuple] = []
    failures: list[str] = []

    def flow() -> None:
        rng = random.Random(6)
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                key = (rng.randrange(170, 200), rng.randrange(SHOWN), rng.choice(USERS))
                label = rng.choice(("like", "dislike"))
                expected = truth.expect(key, label)
                response = client.post(f"{stack.url('collector')}/api/feedback", json=body(key, label))
                if response.status_code != 200 or response.json()["status"] != expected:
                    failures.append(f"{key} {label} {expected}: {response.text}")
                sent.append(key)

    thread = threading.Thread(target=flow, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(sent) > 30, 30, 0.05, "feedback before the outage")
        stack.broker.stop()
        at_stop = len(sent)
        wait_for(lambda: len(sent) > at_stop + 40, 30, 0.05, "feedback accepted during the outage")
        outbox = httpx.get(f"{stack.url('collector')}/api/feedback/stats", timeout=30).json()["outbox"]
        assert outbox["pending"] > 0, "accepted while the broker is down: waiting in the outbox"
        # What the outbox alerts watch, while Kafka is down: events waiting, and for longer and longer.
        wait_for(lambda: metric(stack, "collector", "eduranker_outbox_backlog") > 0
                 and metric(stack, "collector", "eduranker_outbox_oldest_pending_age_seconds") > 3,
                 60, 0.2, "the outbox gauges to show the events waiting")
        stack.broker.start()
        at_start = len(sent)
        wait_for(lambda: len(sent) > at_start + 30, 30, 0.05, "feedback after the broker came back")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failures, failures[:3]
    assert_all_agree(stack, truth, timeout_s=90)
    wait_for(lambda: httpx.get(f"{stack.url('collector')}/api/feedback/stats", timeout=30)
             .json()["outbox"]["pending"] == 0, 60, 0.5, "the outbox to drain")


def test_events_the_broker_lost_are_counted_from_the_store(stack: LocalStack, truth: Truth) -> None:
    """Published, then lost with the broker before the aggregator read them."""
    assert stack.broker is not None
    assert_all_agree(stack, truth, timeout_s=90)
    recovered = metric(stack, "aggregator", "eduranker_aggregator_recovered_events_total")
    aggregator = stack.processes["aggregator"]
    aggregator.send_signal(signal.SIGSTOP)
    try:
        # A broker the stopped aggregator never talked to: nothing it holds can reach the aggregator.
        stack.broker.stop()
        stack.broker.start()
        ops = [((i, r, "lost"), "like", None) for i in range(100, 103) for r in range(SHOWN)]
        asyncio.run(send_all(stack, ops, truth, workers=3))
        wait_for(lambda: httpx.get(f"{stack.url('collector')}/api/feedback/stats", timeout=30)
                 .json()["outbox"]["pending"] == 0, 30, 0.1, "the events to be published")
        stack.broker.stop()
        stack.broker.start()
    finally:
        aggregator.send_signal(signal.SIGCONT)
    assert_all_agree(stack, truth, timeout_s=90)
    assert metric(stack, "aggregator", "eduranker_aggregator_recovered_events_total") - recovered == len(ops)


def test_aggregator_rebuilds_from_the_store_after_the_broker_lost_its_changelog(
        stack: LocalStack, truth: Truth) -> None:
    assert_all_agree(stack, truth, timeout_s=90)
    before = aggregator_stats(stack)
    stack.stop_service("aggregator")
    assert stack.broker is not None
    stack.broker.stop()
    stack.broker.start()
    stack.start_service("aggregator")
    stack.wait_ready("aggregator", timeout_s=120)
    after = aggregator_stats(stack)
    assert after["origin"]["reason"] == "start" and after["origin"]["at"] > before["origin"]["at"]
    assert_all_agree(stack, truth)
    # Counting goes on from the rebuilt counts.
    ops = operations(random.Random(7), 40, range(100, 110))
    asyncio.run(send_all(stack, ops, truth, workers=4))
    assert_all_agree(stack, truth)


def test_stats_describe_versions_balance_and_the_policy(stack: LocalStack) -> None:
    stats = aggregator_stats(stack)
    feedback = stats["feedback"]
    assert feedback["like_ratio"] == round(feedback["like"] / feedback["total"], 6)
    assert sum(v["total"] for v in feedback["by_model_version"].values()) == feedback["total"]
    assert stats["policy"]["min_new"] == 1000000
    assert stats["policy"]["decision"] is None
    assert "fewer than 1000000" in stats["policy"]["blocked_by"]
    exported = httpx.get(f"{stack.url('aggregator')}/metrics", timeout=10).text
    for name in ("eduranker_aggregator_feedback_by_model_version", "eduranker_aggregator_count_delay_seconds",
                 "eduranker_aggregator_dedup_entries"):
        assert name in exported


# What the collector and the aggregator need from the store, on every backend the contract covers.

async def test_store_writes_many_in_order_and_reads_back_published_events(store: Store) -> None:  # noqa: F811
    first = make_feedback(0, request_id="r0")
    change = make_feedback(0, feedback_id="fb-x", label="dislike", request_id="r1")
    outcomes = await store.record_feedback_many([first, change, make_feedback(1), first])
    assert [o.status for o in outcomes] == ["created", "updated", "created", "duplicate"]
    ids = sorted(e.event_id for e in await store.pending_outbox())
    assert len(ids) == 3
    await store.mark_published(ids)  # one timestamp for the three: pages must not skip any

    epoch, later = datetime(2000, 1, 1, tzinfo=UTC), utcnow() + timedelta(seconds=5)
    read, after, after_id = [], epoch, ""
    while page := await store.published_events(after, later, limit=2, after_id=after_id):
        read += page
        after, after_id = page[-1].published_at, page[-1].event_id
    assert sorted(e.event_id for e in read) == ids and len(read) == 3
    assert all(e.published_at is not None and e.payload for e in read)
    assert await store.published_events(epoch, epoch + timedelta(days=1)) == []
    # The same pages without payloads, then the entries of chosen ids.
    assert await store.published_event_ids(epoch, later, limit=2) == [
        (e.event_id, e.published_at) for e in read[:2]]
    second = read[1].published_at
    assert second is not None
    assert await store.published_event_ids(second, later, after_id=read[1].event_id) == [
        (read[2].event_id, read[2].published_at)]
    assert await store.outbox_events([read[2].event_id, "nope"]) == [read[2]]
    assert await store.outbox_events([]) == []

    snapshot = await store.feedback_snapshot(events_since=epoch)
    assert [(f.feedback_id, f.label) for f in snapshot.feedback] == [("fb-0", "dislike"), ("fb-1", "like")]
    assert sorted(snapshot.event_ids) == ids
    # Published and older than `events_since`: left out; still pending: always in.
    await store.record_feedback(make_feedback(2))
    recent = await store.feedback_snapshot(events_since=later)
    assert len(recent.feedback) == 3
    assert recent.event_ids == [e.event_id for e in await store.pending_outbox()]


async def test_a_faulty_item_fails_alone_and_the_writer_goes_on(store: Store) -> None:  # noqa: F811
    writer = ActionWriter("feedback-writer", store.record_feedback_many)
    writer.start()
    try:
        await writer.record(make_feedback(0))
        clash = make_feedback(1, feedback_id="fb-0")  # another result under an id already taken
        results = await asyncio.gather(writer.record(make_feedback(2)), writer.record(clash),
                                       writer.record(make_feedback(3)), return_exceptions=True)
        assert [getattr(r, "status", type(r).__name__) for r in results][::2] == ["created", "created"]
        assert isinstance(results[1], Exception)
        assert sorted(f.feedback_id for f in await store.list_feedback()) == ["fb-0", "fb-2", "fb-3"]
        assert (await writer.record(make_feedback(4))).status == "created"
    finally:
        await writer.close()


async def test_a_write_its_driver_cancels_answers_503_and_the_writer_goes_on(store: Store) -> None:  # noqa: F811
    """An async driver may end its own work on a lost server with a `CancelledError`: the caller hears
    503 (safe to send again), and the next action is stored. The writer used to die of it, leaving
    every later caller waiting and the shutdown waiting on its queue."""
    calls = 0

    async def driver_cancels_once(items: list) -> list:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError("the driver's own")
        return await store.record_feedback_many(items)

    writer = ActionWriter("feedback-writer", driver_cancels_once)
    writer.start()
    try:
        with pytest.raises(StoreUnavailableError, match="interrupted"):
            await asyncio.wait_for(writer.record(make_feedback(0)), 10)
        assert (await asyncio.wait_for(writer.record(make_feedback(0)), 10)).status == "created"
        assert [f.feedback_id for f in await store.list_feedback()] == ["fb-0"]
    finally:
        await asyncio.wait_for(writer.close(), 10)


async def test_a_write_that_never_returns_answers_503_in_time(store: Store) -> None:  # noqa: F811
    """A store that takes the connection and never answers holds no caller past the writer's
    timeout, nor the writer itself, nor its shutdown."""
    hang, calls = asyncio.Event(), 0

    async def first_write_hangs(items: list) -> list:
        nonlocal calls
        calls += 1
        if calls == 1:
            await hang.wait()
        return await store.record_feedback_many(items)

    writer = ActionWriter("feedback-writer", first_write_hangs, timeout_s=0.5)
    writer.start()
    try:
        with pytest.raises(StoreUnavailableError, match="not confirmed the write within 0.5s"):
            await asyncio.wait_for(writer.record(make_feedback(0)), 10)
        assert (await asyncio.wait_for(writer.record(make_feedback(1)), 10)).status == "created"
    finally:
        await asyncio.wait_for(writer.close(), 10)


async def test_a_request_is_stored_all_or_none(store: Store) -> None:  # noqa: F811
    """Requests sharing a transaction that fails are written again each on its own: the faulty one
    fails whole, the others are stored."""
    writer = ActionWriter("feedback-writer", store.record_feedback_many)
    writer.start()
    try:
        await writer.record(make_feedback(0))
        clash = make_feedback(1, feedback_id="fb-0")
        faulty, fine = await asyncio.gather(writer.record_many([make_feedback(2), clash, make_feedback(3)]),
                                            writer.record_many([make_feedback(4)]), return_exceptions=True)
        assert isinstance(faulty, Exception)
        assert [o.status for o in fine] == ["created"]  # type: ignore[union-attr]
        assert sorted(f.feedback_id for f in await store.list_feedback()) == ["fb-0", "fb-4"]
    finally:
        await writer.close()
