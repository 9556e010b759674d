"""One contract for every store backend: SQLite, and MongoDB (SecantusDB started for the session, or
the server `EDURANKER_TEST_MONGODB_URL` names; tests/mongodb.py).

A new store method gets its test here, taking the `store` fixture: it then runs on both backends.
Timestamps are whole milliseconds because BSON dates keep no finer precision.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pymongo
import pytest

from shared.events import FEEDBACK_TOPIC, INTERACTION_TOPIC, FeedbackEvent, InteractionEvent
from shared.messaging.codec import decode
from shared.records import (
    Experiment,
    Feedback,
    Inference,
    Interaction,
    Interleaved,
    InterleavingRecord,
    ModelVersion,
    Resource,
    ShownResult,
    TrainingRun,
    text_hash,
    utcnow,
)
from shared.store import Store, StoreUnavailableError
from shared.store.mongo import MongoStore
from shared.store.sqlite import SQLiteStore
from tests.mongodb import database_url

T0 = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "mongodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        sqlite = SQLiteStore(tmp_path / "store.db")
        await sqlite.init()
        yield sqlite
        await sqlite.close()
        return
    mongo = MongoStore(database_url(request.getfixturevalue("mongodb")))
    await mongo.init()
    try:
        yield mongo
    finally:
        with pymongo.timeout(120):  # dropping is slow on a loaded machine, and no test waits for it
            await mongo.db.client.drop_database(mongo.db.name)
        await mongo.close()


def make_feedback(n: int = 0, **fields: Any) -> Feedback:
    values: dict[str, Any] = {
        "feedback_id": f"fb-{n}",
        "inference_id": "inf-1",
        "resource_id": f"res-{n}",
        "label": "like",
        "rank": 1,
        "model_version": "v0001",
        "user_id": "user-1",
        "created_at": at(n),
        "updated_at": at(n),
    }
    return Feedback(**(values | fields))


def payload_event(payload: str) -> FeedbackEvent:
    event = decode(FEEDBACK_TOPIC, payload.encode())
    assert isinstance(event, FeedbackEvent)
    return event


async def test_resources_upsert_get_list_and_version(store: Store) -> None:
    empty_version = await store.resources_version()
    assert await store.list_resources() == []
    b = Resource(id="b", title="Photosynthesis", description="Light to sugar.", subject="biology")
    a = Resource(id="a", title="Algebra basics", level="beginner", url="https://example.org/a")
    assert await store.upsert_resources([b, a]) == 2

    assert await store.list_resources() == [a, b]
    assert await store.get_resources(["a", "missing"]) == {"a": a}
    assert await store.get_resources([]) == {}
    added_version = await store.resources_version()
    assert added_version != empty_version
    assert await store.resources_version() == added_version

    a2 = a.model_copy(update={"title": "Algebra, revised"})
    assert await store.upsert_resources([a2]) == 1
    assert await store.list_resources() == [a2, b]
    updated_version = await store.resources_version()
    assert updated_version not in (empty_version, added_version)


async def test_resources_since_returns_what_was_written_from_then_on(store: Store) -> None:
    before = utcnow() - timedelta(seconds=1)
    a = Resource(id="a", title="Algebra basics")
    b = Resource(id="b", title="Photosynthesis")
    await store.upsert_resources([a, b])
    assert sorted(r.id for r in await store.resources_since(before)) == ["a", "b"]
    later = utcnow() + timedelta(milliseconds=1)
    assert await store.resources_since(later) == []
    await asyncio.sleep(0.01)  # the writer's clock moves on: the next write is after `later`
    a2 = a.model_copy(update={"title": "Algebra, revised"})
    await store.upsert_resources([a2])
    assert await store.resources_since(later) == [a2]  # the update, not the unchanged one
    assert sorted(r.title for r in await store.resources_since(before)) == ["Algebra, revised",
                                                                           "Photosynthesis"]


async def test_hidden_and_removed_resources_leave_the_catalogue_and_replicas_read_it(store: Store) -> None:
    a, b, c = (Resource(id=i, title=f"Resource {i}") for i in "abc")
    await store.upsert_resources([a, b, c])
    before = utcnow() - timedelta(seconds=1)
    version = await store.resources_version()

    assert await store.set_hidden(["a", "unknown"], True) == 1
    assert await store.set_hidden(["a"], True) == 0  # already hidden
    assert await store.resources_version() != version
    assert await store.list_resources() == [b, c]
    assert await store.get_resources(["a", "b"]) == {"b": b}
    assert await store.resource_states(["a", "b", "unknown"]) == {"a": "hidden", "b": "live"}
    a2 = a.model_copy(update={"title": "Resource a, revised"})
    await store.upsert_resources([a2])  # an update does not show a hidden resource again
    assert await store.list_resources() == [b, c]

    version = await store.resources_version()
    assert await store.remove_resources(["b", "unknown"]) == 1
    assert await store.remove_resources(["b"]) == 0
    assert await store.resources_version() != version
    assert await store.list_resources() == [c]
    assert await store.resource_ids() == ["a", "c"]
    assert await store.get_resources(["b"]) == {}
    assert (await store.resource_states(["b"]))["b"] == "removed"
    assert sorted(await store.withdrawn_since(before)) == ["a", "b"]
    assert await store.resources_since(before) == [c]  # live ones only

    later = utcnow() + timedelta(milliseconds=1)
    await asyncio.sleep(0.01)  # the writer's clock moves on: the next writes are after `later`
    assert await store.set_hidden(["a", "b", "c"], False) == 1  # only a hidden one is shown again
    await store.upsert_resources([b])  # a removed id comes back as a new resource
    assert await store.list_resources() == [a2, b, c]
    assert sorted(r.id for r in await store.resources_since(later)) == ["a", "b"]
    assert await store.withdrawn_since(later) == []
    assert await store.resource_states(["a", "b", "c"]) == {"a": "live", "b": "live", "c": "live"}


async def test_removal_deletes_the_stored_vectors_of_its_texts_and_hiding_keeps_them(store: Store) -> None:
    kept, hidden, gone = (Resource(id=i, title=f"Text of {i}") for i in ("kept", "hidden", "gone"))
    await store.upsert_resources([kept, hidden, gone])
    vectors = {text_hash(r.text): np.full(4, n, dtype=np.float32) for n, r in enumerate((kept, hidden, gone))}
    await store.put_vectors("model-a", vectors)
    await store.put_vectors("model-b", {text_hash(gone.text): np.ones(4, dtype=np.float32)})
    await store.set_hidden(["hidden"], True)
    assert await store.remove_resources(["gone"]) == 1
    assert sorted(await store.get_vectors("model-a", list(vectors))) == sorted(
        [text_hash(kept.text), text_hash(hidden.text)])
    assert await store.count_vectors("model-b") == 0


async def test_inferences_add_get_count(store: Store) -> None:
    results = [
        ShownResult(resource_id="r1", rank=1, first_stage_score=3.5, rerank_score=0.9, scores={"bm25": 3.5}),
        ShownResult(resource_id="r2", rank=2, first_stage_score=2.0),
    ]
    infs = [
        Inference(
            inference_id=f"i{n}",
            query=f"query {n}",
            model_version=version,
            use_reranker=True,
            results=results,
            latency_ms=12.5,
            created_at=at(n),
        )
        for n, version in enumerate(["v0001", "v0001", "v0000"])
    ]
    await store.add_inferences(infs)
    await store.add_inferences([])
    assert await store.get_inference("i1") == infs[1]
    assert await store.get_inference("nope") is None
    assert await store.get_inferences(["i0", "i2", "nope"]) == {"i0": infs[0], "i2": infs[2]}
    assert await store.count_inferences() == {"v0001": 2, "v0000": 1}

    # Logged twice: the first copy stays, nothing is counted twice.
    await store.add_inferences([infs[0].model_copy(update={"query": "changed"})])
    assert (await store.get_inference("i0")) == infs[0]
    assert await store.count_inferences() == {"v0001": 2, "v0000": 1}


async def test_record_feedback_created_duplicate_updated(store: Store) -> None:
    first = make_feedback(request_id="req-1")
    created = await store.record_feedback(first)
    assert (created.status, created.feedback, created.previous_label) == ("created", first, None)

    retry = await store.record_feedback(first)
    assert (retry.status, retry.feedback) == ("duplicate", first)

    same_label = await store.record_feedback(make_feedback(feedback_id="fb-x", request_id="req-2"))
    assert (same_label.status, same_label.feedback) == ("duplicate", first)

    change = make_feedback(feedback_id="fb-y", label="dislike", request_id="req-3", updated_at=at(60))
    updated = await store.record_feedback(change)
    expected = first.model_copy(update={"label": "dislike", "updated_at": at(60), "request_id": "req-3"})
    assert (updated.status, updated.feedback, updated.previous_label) == ("updated", expected, "like")
    assert await store.list_feedback() == [expected]

    # Late retries of any earlier request are no-ops: the later label wins.
    for request_id in ("req-3", "req-1", "req-2"):
        late = await store.record_feedback(make_feedback(request_id=request_id))
        assert (late.status, late.feedback) == ("duplicate", expected)

    back = await store.record_feedback(
        make_feedback(feedback_id="fb-z", request_id="req-4", updated_at=at(90))
    )
    assert (back.status, back.feedback.label, back.previous_label) == ("updated", "like", "dislike")
    assert back.feedback.feedback_id == "fb-0"
    assert [f.label for f in await store.list_feedback()] == ["like"]
    assert len(await store.pending_outbox()) == 3


async def test_feedback_is_one_per_user_per_shown_result(store: Store) -> None:
    u1 = make_feedback(0, user_id="u1")
    u2 = make_feedback(1, resource_id="res-0", user_id="u2", label="dislike")
    session = make_feedback(2, resource_id="res-0", user_id=None, session_id="s1")
    anonymous = make_feedback(3, resource_id="res-0", user_id=None)
    other_anonymous = make_feedback(4, resource_id="res-0", user_id=None, label="dislike")
    statuses = [
        (await store.record_feedback(f)).status for f in (u1, u2, session, anonymous, other_anonymous)
    ]
    assert statuses == ["created", "created", "created", "created", "updated"]
    stored = await store.list_feedback()
    assert [(f.feedback_id, f.user_id, f.session_id, f.label) for f in stored] == [
        ("fb-0", "u1", None, "like"),
        ("fb-1", "u2", None, "dislike"),
        ("fb-2", None, "s1", "like"),
        ("fb-3", None, None, "dislike"),
    ]


async def test_test_feedback_is_listed_only_on_request(store: Store) -> None:
    real = make_feedback(0)
    probe = make_feedback(1, is_test=True)
    for feedback in (real, probe):
        assert (await store.record_feedback(feedback)).status == "created"
    assert await store.list_feedback() == [real]
    assert await store.list_feedback(include_test=True) == [real, probe]


async def test_outbox_follows_feedback_changes(store: Store) -> None:
    assert await store.outbox_backlog() == (0, None)
    await store.record_feedback(make_feedback(0, request_id="req-1"))
    await store.record_feedback(make_feedback(0, request_id="req-1"))
    await store.record_feedback(make_feedback(0, feedback_id="fb-dup"))
    [created] = await store.pending_outbox()
    await store.record_feedback(make_feedback(0, label="dislike", request_id="req-2"))
    await store.record_feedback(make_feedback(1, rank=4))

    pending = await store.pending_outbox()
    assert len(pending) == 3
    assert all(e.topic == FEEDBACK_TOPIC and e.key == "inf-1" for e in pending)
    events = {e.event_id: payload_event(e.payload) for e in pending}
    assert sorted((ev.feedback_id, ev.label, ev.previous_label, ev.rank) for ev in events.values()) == [
        ("fb-0", "dislike", "like", 1),
        ("fb-0", "like", None, 1),
        ("fb-1", "like", None, 4),
    ]
    assert events[created.event_id].label == "like"
    assert len(await store.pending_outbox(limit=2)) == 2
    assert await store.outbox_backlog() == (3, min(e.created_at for e in pending))

    await store.mark_published([created.event_id])
    left = await store.pending_outbox()
    assert sorted(e.event_id for e in left) == sorted(set(events) - {created.event_id})
    assert await store.outbox_backlog() == (2, min(e.created_at for e in left))
    assert all(e.created_at.utcoffset() == timedelta(0) for e in left)

    await store.mark_published([])
    await store.mark_published([e.event_id for e in left] + ["unknown"])
    assert await store.pending_outbox() == []
    assert await store.outbox_backlog() == (0, None)


async def test_training_runs_save_update_and_list_newest_first(store: Store) -> None:
    runs = [TrainingRun(run_id=f"run-{n}", reason="threshold", started_at=at(n * 60)) for n in range(3)]
    for run in (runs[1], runs[0], runs[2]):
        await store.save_training_run(run)
    assert await store.list_training_runs() == runs[::-1]
    assert await store.list_training_runs(limit=2) == [runs[2], runs[1]]

    done = runs[1].model_copy(
        update={
            "status": "promoted",
            "version": "v0002",
            "pairs": 120,
            "metrics": {"ndcg@10": 0.41},
            "finished_at": at(500),
            "detail": "beat champion and bm25",
        }
    )
    await store.save_training_run(done)
    assert await store.list_training_runs() == [runs[2], done, runs[0]]


async def test_model_versions_save_update_and_list(store: Store) -> None:
    v2 = ModelVersion(
        version="v0002",
        location="v0002",
        status="promoted",
        base_model="minilm",
        metrics={"ndcg@10": 0.4, "mrr@10": 0.5},
        created_at=at(10),
    )
    v1 = ModelVersion(
        version="v0001", location="v0001", status="promoted", base_model="minilm", created_at=at(0)
    )
    await store.save_model_version(v2)
    await store.save_model_version(v1)
    assert await store.list_model_versions() == [v1, v2]
    retired = v1.model_copy(update={"status": "retired"})
    await store.save_model_version(retired)
    assert await store.list_model_versions() == [retired, v2]


async def test_concurrent_feedback_writes_land_exactly_once(store: Store) -> None:
    distinct = [make_feedback(n, user_id=f"user-{n % 7}") for n in range(50)]
    repeated = make_feedback(99, request_id="req-repeated")
    outcomes = await asyncio.gather(*(store.record_feedback(f) for f in [*distinct, *[repeated] * 10]))

    assert Counter(o.status for o in outcomes) == {"created": 51, "duplicate": 9}
    stored = await store.list_feedback()
    assert sorted(f.feedback_id for f in stored) == sorted([f.feedback_id for f in distinct] + ["fb-99"])
    pending = await store.pending_outbox(limit=1000)
    assert sorted(payload_event(e.payload).feedback_id for e in pending) == sorted(
        f.feedback_id for f in stored
    )
    assert await store.outbox_backlog() == (51, min(e.created_at for e in pending))


async def test_concurrent_label_changes_have_one_winner(store: Store) -> None:
    await store.record_feedback(make_feedback(0))
    changes = [make_feedback(0, feedback_id=f"fb-change-{n}", label="dislike") for n in range(10)]
    outcomes = await asyncio.gather(*(store.record_feedback(f) for f in changes))

    assert Counter((o.status, o.previous_label) for o in outcomes) == {
        ("updated", "like"): 1,
        ("duplicate", None): 9,
    }
    assert [(f.feedback_id, f.label) for f in await store.list_feedback()] == [("fb-0", "dislike")]
    labels = sorted(
        (ev.label, ev.previous_label)
        for ev in map(payload_event, (e.payload for e in await store.pending_outbox()))
    )
    assert labels == [("dislike", "like"), ("like", None)]


def make_experiment(n: int, **fields: Any) -> Experiment:
    values: dict[str, Any] = {
        "experiment_id": f"exp-{n}", "kind": "challenge", "champion": "v0001", "challenger": f"v000{n + 2}",
        "share": 0.5, "alpha": 0.05, "min_impressions": 100, "max_impressions": 1000,
        "max_s": 3600.0, "started_at": at(n * 60), "started_by": "training run r1", "run_id": "r1",
    }
    return Experiment(**(values | fields))


async def test_experiments_save_update_list_newest_first_and_find_the_running_one(store: Store) -> None:
    assert await store.running_experiment() is None and await store.list_experiments() == []
    first, second = make_experiment(0), make_experiment(1)
    await store.save_experiment(second)
    await store.save_experiment(first)
    assert await store.list_experiments() == [second, first]
    assert await store.get_experiment("exp-0") == first and await store.get_experiment("nope") is None
    ended = second.model_copy(update={"status": "ended", "decision": "promote", "reason": "users decided",
                                      "evidence": {"challenger_wins": 40, "champion_wins": 12,
                                                   "queries": {"challenger": 5}},
                                      "ended_at": at(600)})
    await store.save_experiment(ended)
    assert await store.list_experiments(limit=1) == [ended]
    assert await store.running_experiment() == first
    await store.save_experiment(first.model_copy(update={"status": "ended", "decision": "stopped"}))
    assert await store.running_experiment() is None


async def test_impressions_and_feedback_are_found_by_experiment(store: Store) -> None:
    def search(n: int, experiment: str | None) -> Inference:
        record = None if experiment is None else InterleavingRecord(
            experiment_id=experiment, kind="challenge", champion="v0001", challenger="v0002",
            champion_ranking=["a", "b"], challenger_ranking=["b", "a"])
        results = [ShownResult(resource_id=r, rank=i + 1, first_stage_score=1.0,
                               team=None if experiment is None else ("champion", "challenger")[i])
                   for i, r in enumerate("ab")]
        return Inference(inference_id=f"inf-{n}", query="q", model_version="v0001", use_reranker=True,
                         results=results, latency_ms=1.0, created_at=at(n), interleaving=record)

    await store.add_inferences([search(0, "exp-a"), search(1, "exp-a"), search(2, "exp-b"), search(3, None)])
    assert (await store.count_impressions("exp-a"), await store.count_impressions("exp-b")) == (2, 1)
    assert await store.count_impressions("exp-z") == 0
    assert (await store.get_inference("inf-0")).results[1].team == "challenger"  # type: ignore[union-attr]
    tagged = Interleaved(experiment_id="exp-a", team="challenger", query_key="k1")
    await store.record_feedback(make_feedback(0, inference_id="inf-0", interleaved=tagged))
    await store.record_feedback(make_feedback(1, inference_id="inf-3"))
    changed = await store.record_feedback(make_feedback(0, feedback_id="fb-x", inference_id="inf-0",
                                                        label="dislike", updated_at=at(9)))
    assert changed.status == "updated" and changed.feedback.interleaved == tagged
    found = await store.experiment_feedback("exp-a")
    assert [(f.feedback_id, f.label, f.interleaved) for f in found] == [("fb-0", "dislike", tagged)]
    assert await store.experiment_feedback("exp-b") == []
    events = [payload_event(e.payload) for e in await store.pending_outbox()]
    assert [e.interleaved for e in events if e.feedback_id == "fb-0"] == [tagged, tagged]


async def test_vectors_are_kept_by_model_and_text_and_the_first_stored_stays(store: Store) -> None:
    rng = np.random.default_rng(7)
    first = {f"hash-{n}": rng.standard_normal(384).astype(np.float32) for n in range(1200)}
    assert await store.get_vectors("model-a", ["hash-0"]) == {}
    await store.put_vectors("model-a", first)
    await store.put_vectors("model-a", {})

    keys = list(first) + ["absent"]  # more keys than one query takes
    found = await store.get_vectors("model-a", keys)
    assert sorted(found) == sorted(first)
    for key, vector in first.items():
        assert found[key].dtype == np.float32 and np.array_equal(found[key], vector)
    assert await store.get_vectors("model-a", []) == {}
    assert await store.count_vectors("model-a") == 1200

    # Another model's vectors for the same texts are its own; a second write of a key changes nothing.
    other = {"hash-0": np.ones(8, dtype=np.float32), "hash-new": np.zeros(384, dtype=np.float32)}
    await store.put_vectors("model-b", other)
    await store.put_vectors("model-a", {"hash-0": np.ones(384, dtype=np.float32),
                                        "hash-1200": np.full(384, 2.0, dtype=np.float32)})
    again = await store.get_vectors("model-a", ["hash-0", "hash-1200", "hash-new"])
    assert np.array_equal(again["hash-0"], first["hash-0"]) and set(again) == {"hash-0", "hash-1200"}
    assert np.array_equal((await store.get_vectors("model-b", ["hash-0"]))["hash-0"], other["hash-0"])
    assert (await store.count_vectors("model-a"), await store.count_vectors("model-b")) == (1201, 2)
    assert await store.count_vectors("model-c") == 0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_mongo_store_fails_fast_when_no_server_answers() -> None:
    """Runs without a server: an unreachable MongoDB is a StoreUnavailableError, within the timeout."""
    store = MongoStore(f"mongodb://127.0.0.1:{closed_port()}/catalogue", timeout_s=0.5)
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(StoreUnavailableError, match="MongoDB unavailable"):
            await store.init()
        assert store.db.name == "catalogue"
        with pytest.raises(StoreUnavailableError):
            await store.record_feedback(make_feedback())
        with pytest.raises(StoreUnavailableError):
            await store.ping()
    finally:
        await store.close()
    assert asyncio.get_running_loop().time() - started < 5

    unnamed = MongoStore(f"mongodb://127.0.0.1:{closed_port()}")
    unnamed.timeout_s = 0.2
    try:
        with pytest.raises(StoreUnavailableError):
            await unnamed.init()
        assert unnamed.db.name == "eduranker"
    finally:
        await unnamed.close()


async def test_sqlite_file_from_before_experiments_gains_their_columns(tmp_path: Path) -> None:
    """A store written by an earlier EduRanker opens, keeps its rows and counts impressions."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(
            "CREATE TABLE inferences (inference_id TEXT PRIMARY KEY, model_version TEXT NOT NULL, "
            "doc TEXT NOT NULL, created_at TEXT NOT NULL);"
            "CREATE TABLE feedback (feedback_id TEXT PRIMARY KEY, inference_id TEXT NOT NULL, "
            "resource_id TEXT NOT NULL, user_key TEXT NOT NULL, request_id TEXT, doc TEXT NOT NULL, "
            "UNIQUE (inference_id, resource_id, user_key));")
        old.execute("INSERT INTO feedback VALUES ('fb-0', 'inf-1', 'res-0', 'user-1', NULL, ?)",
                    (make_feedback(0).model_dump_json(),))
    store = SQLiteStore(path)
    await store.init()
    try:
        assert [f.feedback_id for f in await store.list_feedback()] == ["fb-0"]
        assert await store.count_impressions("exp-a") == 0
        assert await store.experiment_feedback("exp-a") == []
    finally:
        await store.close()


def make_interaction(n: int = 0, **fields: Any) -> Interaction:
    values: dict[str, Any] = {"interaction_id": f"in-{n}", "inference_id": "inf-1", "resource_id": f"res-{n}",
                              "rank": n + 1, "model_version": "v0001", "session_id": "s-1",
                              "created_at": at(n), "updated_at": at(n)}
    return Interaction(**(values | fields))


async def test_interactions_an_open_then_its_dwell_with_their_events(store: Store) -> None:
    opened, again, back, shorter, longer = await store.record_interactions([
        make_interaction(0, request_id="o-1"), make_interaction(0, interaction_id="in-x"),
        make_interaction(0, dwell_s=12.0, updated_at=at(5)),
        make_interaction(0, dwell_s=3.0, updated_at=at(6)),
        make_interaction(0, dwell_s=40.0, updated_at=at(7), request_id="r-2")])
    assert (opened.status, again.status, back.status, shorter.status, longer.status) == (
        "created", "duplicate", "updated", "duplicate", "updated")
    assert (back.previous_dwell_s, longer.previous_dwell_s, longer.interaction.dwell_s) == (None, 12.0, 40.0)
    retried = (await store.record_interactions([make_interaction(0, dwell_s=99.0, request_id="o-1")]))[0]
    assert retried.status == "duplicate" and retried.interaction.dwell_s == 40.0  # a retry changes nothing
    other_person = (await store.record_interactions([make_interaction(1, resource_id="res-0",
                                                                      session_id="s-2")]))[0]
    assert other_person.status == "created"
    stored = await store.list_interactions()
    assert sorted((i.session_id, i.dwell_s) for i in stored) == [("s-1", 40.0), ("s-2", None)]
    events = [decode(e.topic, e.payload.encode()) for e in await store.pending_outbox()]
    mine = [e for e in events if isinstance(e, InteractionEvent)]
    assert [(e.opened, e.dwell_s, e.previous_dwell_s) for e in mine] == [
        (True, None, None), (False, 12.0, None), (False, 40.0, 12.0), (True, None, None)]
    assert all(e.topic == INTERACTION_TOPIC for e in await store.pending_outbox())
    snapshot = await store.feedback_snapshot(events_since=at(0))
    assert len(snapshot.interactions) == 2 and len(snapshot.event_ids) == 4
    pending, oldest = await store.outbox_backlog()
    assert pending == 4 and oldest is not None
    await store.mark_published([e.event_id for e in mine])
    assert await store.pending_outbox() == [] and (await store.outbox_backlog())[0] == 0
    published = await store.published_event_ids(at(-10), utcnow() + timedelta(seconds=10))
    assert sorted(i for i, _ in published) == sorted(e.event_id for e in mine)


async def test_the_outbox_reads_feedback_and_interactions_together(store: Store) -> None:
    await store.record_feedback(make_feedback(0))
    await store.record_interactions([make_interaction(1)])
    pending = await store.pending_outbox()
    assert sorted(e.topic for e in pending) == sorted([FEEDBACK_TOPIC, INTERACTION_TOPIC])
    assert len(await store.outbox_events([e.event_id for e in pending])) == 2
    await store.mark_published([e.event_id for e in pending])
    page = await store.published_events(at(-10), utcnow() + timedelta(seconds=10), limit=1)
    rest = await store.published_events(page[0].published_at, utcnow() + timedelta(seconds=10), limit=5,
                                        after_id=page[0].event_id)
    assert len(page) == 1 and len(rest) == 1 and {page[0].topic, rest[0].topic} == {FEEDBACK_TOPIC,
                                                                                     INTERACTION_TOPIC}


async def test_recent_inferences_newest_first_and_interactions_by_experiment(store: Store) -> None:
    await store.add_inferences([Inference(inference_id=f"i{n}", query="q", model_version="v0",
                                          use_reranker=True, results=[], latency_ms=1.0, created_at=at(n))
                                for n in range(5)])
    assert [i.inference_id for i in await store.recent_inferences(3)] == ["i4", "i3", "i2"]
    tag = Interleaved(experiment_id="exp-1", team="challenger", query_key="k", share=0.7)
    await store.record_interactions([make_interaction(0, interleaved=tag), make_interaction(1)])
    assert [i.interaction_id for i in await store.experiment_interactions("exp-1")] == ["in-0"]
