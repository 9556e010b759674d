"""MongoDB backend (production), on PyMongo's async client; needs no replica set.

A feedback's outbox events live inside the feedback document itself (`outbox` array), so the
feedback and the event announcing it are written by one single-document update: atomic on a
standalone server, where multi-document transactions are not available.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
from bson import Binary
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReplaceOne, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from shared.events import utcnow
from shared.store.base import (
    Experiment,
    Feedback,
    FeedbackOutcome,
    FeedbackSnapshot,
    Inference,
    ModelVersion,
    OutboxEntry,
    Resource,
    Store,
    StoreUnavailableError,
    TrainingRun,
    feedback_event,
)

DEFAULT_DATABASE = "eduranker"
DUPLICATE_KEY = 11000
# Each retry means another writer changed the same feedback in between; more than this is a storm.
MAX_FEEDBACK_ATTEMPTS = 10
VECTORS_PER_QUERY = 5000
# What callers read back from a feedback document: the record, not the bookkeeping.
FEEDBACK_FIELDS = {"_id": 0, "outbox": 0, "user_key": 0, "request_ids": 0}
SNAPSHOT_FIELDS = {"_id": 0, "user_key": 0, "request_ids": 0, "outbox.payload": 0}
PENDING = {"outbox": {"$elemMatch": {"published_at": None}}}

P = ParamSpec("P")
T = TypeVar("T")
Doc = dict[str, Any]


def _unavailable_on_outage(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn "server unreachable / too slow" into `StoreUnavailableError` (a 503), leave real errors."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except PyMongoError as exc:
            if isinstance(exc, ConnectionFailure) or exc.timeout:
                raise StoreUnavailableError(f"MongoDB unavailable: {exc}") from exc
            raise

    return wrapper


class MongoStore(Store):
    def __init__(self, url: str, timeout_s: float = 10.0, tls_ca_file: Path | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.tls_ca_file = tls_ca_file
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None

    def client_options(self) -> dict[str, Any]:
        """What `AsyncMongoClient` is given besides the URL."""
        ms = int(self.timeout_s * 1000)
        # tz_aware: BSON dates come back as UTC-aware datetimes, like the models hold them.
        options: dict[str, Any] = {"serverSelectionTimeoutMS": ms, "timeoutMS": ms, "tz_aware": True,
                                   "tzinfo": UTC}
        if self.tls_ca_file is not None:
            options |= {"tls": True, "tlsCAFile": str(self.tls_ca_file)}  # a CA implies TLS
        return options

    @property
    def db(self) -> AsyncDatabase[Doc]:
        if self._db is None:
            raise StoreUnavailableError("store is not open")
        return self._db

    def _col(self, name: str) -> AsyncCollection[Doc]:
        return self.db[name]

    @_unavailable_on_outage
    async def init(self) -> None:
        self._client = AsyncMongoClient(self.url, **self.client_options())
        self._db = self._client.get_default_database(DEFAULT_DATABASE)
        await self._col("inferences").create_index("model_version")
        await self._col("resources").create_index("updated_at")
        await self._col("inferences").create_index("interleaving.experiment_id", sparse=True)
        await self._col("experiments").create_index([("started_at", DESCENDING)])
        await self._col("training_runs").create_index([("started_at", DESCENDING)])
        await self._col("vectors").create_index([("model_id", ASCENDING), ("text_hash", ASCENDING)],
                                                unique=True, name="vector_key")
        await self._col("feedback").create_indexes(
            [
                IndexModel(
                    [("inference_id", ASCENDING), ("resource_id", ASCENDING), ("user_key", ASCENDING)],
                    unique=True,
                    name="feedback_identity",
                ),
                IndexModel("feedback_id", unique=True, name="feedback_id"),
                # Every request id a feedback absorbed, so a late retry of an earlier one stays a no-op.
                # Sparse: the field is absent, never empty, on feedback sent without one.
                IndexModel("request_ids", unique=True, sparse=True, name="feedback_requests"),
                IndexModel(
                    [("outbox.published_at", ASCENDING), ("outbox.created_at", ASCENDING)],
                    name="outbox_pending",
                ),
                IndexModel("outbox.event_id", name="outbox_event"),
                IndexModel("interleaved.experiment_id", sparse=True, name="feedback_experiment"),
            ]
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
            self._db = None

    @_unavailable_on_outage
    async def ping(self) -> None:
        await self.db.command("ping")

    # Resources
    @_unavailable_on_outage
    async def upsert_resources(self, resources: list[Resource]) -> int:
        if not resources:
            return 0
        now = utcnow()
        await self._col("resources").bulk_write(
            [
                ReplaceOne(
                    {"_id": r.id},
                    {"_id": r.id, **r.model_dump(mode="python"), "updated_at": now},
                    upsert=True,
                )
                for r in resources
            ],
            ordered=False,
        )
        # Bumped after the writes: a reader that saw the old version is sure to see a new one later.
        await self._col("meta").update_one({"_id": "resources"}, {"$inc": {"seq": 1}}, upsert=True)
        return len(resources)

    @_unavailable_on_outage
    async def get_resources(self, ids: list[str]) -> dict[str, Resource]:
        if not ids:
            return {}
        cursor = self._col("resources").find({"_id": {"$in": ids}})
        return {d["_id"]: Resource.model_validate(d) async for d in cursor}

    @_unavailable_on_outage
    async def list_resources(self) -> list[Resource]:
        cursor = self._col("resources").find({}).sort("_id", ASCENDING)
        return [Resource.model_validate(d) async for d in cursor]

    @_unavailable_on_outage
    async def resources_since(self, after: datetime) -> list[Resource]:
        cursor = self._col("resources").find({"updated_at": {"$gte": after}}).sort("_id", ASCENDING)
        return [Resource.model_validate(d) async for d in cursor]

    @_unavailable_on_outage
    async def resources_version(self) -> str:
        count = await self._col("resources").count_documents({})
        meta = await self._col("meta").find_one({"_id": "resources"})
        return f"{count}:{meta['seq'] if meta else 0}"

    # Inferences
    @_unavailable_on_outage
    async def add_inferences(self, inferences: list[Inference]) -> None:
        if not inferences:
            return
        docs = [{"_id": i.inference_id, **i.model_dump(mode="python")} for i in inferences]
        try:
            await self._col("inferences").insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            # Like INSERT OR IGNORE: an inference logged twice keeps its first copy.
            _raise_unless_duplicates(exc)

    @_unavailable_on_outage
    async def get_inference(self, inference_id: str) -> Inference | None:
        return (await self.get_inferences([inference_id])).get(inference_id)

    @_unavailable_on_outage
    async def get_inferences(self, ids: list[str]) -> dict[str, Inference]:
        if not ids:
            return {}
        cursor = self._col("inferences").find({"_id": {"$in": ids}})
        return {d["_id"]: Inference.model_validate(d) async for d in cursor}

    @_unavailable_on_outage
    async def count_inferences(self) -> dict[str, int]:
        pipeline = [{"$group": {"_id": "$model_version", "n": {"$sum": 1}}}]
        cursor = await self._col("inferences").aggregate(pipeline)
        return {d["_id"]: d["n"] async for d in cursor}

    # Feedback
    @_unavailable_on_outage
    async def record_feedback(self, feedback: Feedback) -> FeedbackOutcome:
        """Read, then write only if the state read is still there; a lost race re-reads and decides again."""
        col = self._col("feedback")
        inference_id, resource_id, user_key = feedback.identity
        identity = {"inference_id": inference_id, "resource_id": resource_id, "user_key": user_key}
        for _ in range(MAX_FEEDBACK_ATTEMPTS):
            if feedback.request_id:
                seen = await col.find_one({"request_ids": feedback.request_id}, FEEDBACK_FIELDS)
                if seen is not None:
                    return FeedbackOutcome(status="duplicate", feedback=Feedback.model_validate(seen))
            found = await col.find_one(identity, FEEDBACK_FIELDS)
            if found is None:
                entry = feedback_event(feedback, None)
                doc = {**feedback.model_dump(mode="python"), "user_key": user_key, "outbox": [_entry(entry)]}
                if feedback.request_id:
                    doc["request_ids"] = [feedback.request_id]
                try:
                    await col.insert_one(doc)
                except DuplicateKeyError as exc:
                    await self._check_feedback_id(exc, feedback)
                    continue
                return FeedbackOutcome(status="created", feedback=feedback)
            stored = Feedback.model_validate(found)
            if stored.label == feedback.label:
                if feedback.request_id:
                    with contextlib.suppress(DuplicateKeyError):  # taken meanwhile: a duplicate either way
                        await col.update_one(identity, {"$addToSet": {"request_ids": feedback.request_id}})
                return FeedbackOutcome(status="duplicate", feedback=stored)
            updated = stored.model_copy(
                update={
                    "label": feedback.label,
                    "updated_at": feedback.updated_at,
                    "request_id": feedback.request_id or stored.request_id,
                }
            )
            entry = feedback_event(updated, stored.label)
            changes = {
                "label": updated.label,
                "updated_at": updated.updated_at,
                "request_id": updated.request_id,
            }
            update: Doc = {"$set": changes, "$push": {"outbox": _entry(entry)}}
            if feedback.request_id:
                update["$addToSet"] = {"request_ids": feedback.request_id}
            try:
                # The label in the filter: if someone changed it since we read it, this matches nothing.
                won = await col.find_one_and_update(
                    {**identity, "label": stored.label},
                    update,
                    projection=FEEDBACK_FIELDS,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                continue  # its request id was just taken by another write: the next read says which
            if won is not None:
                return FeedbackOutcome(
                    status="updated", feedback=Feedback.model_validate(won), previous_label=stored.label
                )
        raise StoreUnavailableError(f"feedback {feedback.identity} kept changing concurrently; retry")

    async def _check_feedback_id(self, exc: DuplicateKeyError, feedback: Feedback) -> None:
        """A clash on feedback_id alone is a caller bug, not a race: retrying would spin."""
        if "feedback_id" not in (exc.details or {}).get("keyPattern", {}):
            return
        other = await self._col("feedback").find_one({"feedback_id": feedback.feedback_id}, FEEDBACK_FIELDS)
        if other is not None and Feedback.model_validate(other).identity != feedback.identity:
            raise ValueError(f"feedback_id {feedback.feedback_id!r} is already used by another feedback")

    @_unavailable_on_outage
    async def list_feedback(self, include_test: bool = False) -> list[Feedback]:
        query: Doc = {} if include_test else {"is_test": {"$ne": True}}
        # ObjectIds grow with insertion (strictly within one client process), like SQLite's rowid order.
        cursor = self._col("feedback").find(query, FEEDBACK_FIELDS).sort("_id", ASCENDING)
        return [Feedback.model_validate(d) async for d in cursor]

    @_unavailable_on_outage
    async def feedback_snapshot(self, events_since: datetime) -> FeedbackSnapshot:
        """Each document holds a feedback and its events, so each is read consistently on its own:
        a change made after its document was read is absent from both the feedback and the ids."""
        feedback: list[Feedback] = []
        event_ids: list[str] = []
        since = events_since.astimezone(UTC)
        cursor = self._col("feedback").find({}, SNAPSHOT_FIELDS).sort("_id", ASCENDING)
        async for doc in cursor:
            for event in doc.pop("outbox", []):
                if event.get("published_at") is None or event["created_at"] >= since:
                    event_ids.append(event["event_id"])
            feedback.append(Feedback.model_validate(doc))
        return FeedbackSnapshot(feedback=feedback, event_ids=event_ids)

    @_unavailable_on_outage
    async def published_events(self, after: datetime, until: datetime, limit: int = 1000,
                               after_id: str = "") -> list[OutboxEntry]:
        cursor = await self._col("feedback").aggregate(self._published(after, until, after_id, limit))
        return [OutboxEntry.model_validate(d) async for d in cursor]

    @staticmethod
    def _published(after: datetime, until: datetime, after_id: str, limit: int) -> list[Doc]:
        """The pipeline of a page of published events, in (published_at, event_id) order."""
        start, end = after.astimezone(UTC), until.astimezone(UTC)
        window = {"$gte": start, "$lte": end}
        return [
            {"$match": {"outbox.published_at": window}},
            {"$unwind": "$outbox"},
            {"$match": {"outbox.published_at": window, "$or": [
                {"outbox.published_at": {"$gt": start}},
                {"outbox.event_id": {"$gt": after_id}},
            ]}},
            {"$replaceRoot": {"newRoot": "$outbox"}},
            {"$sort": {"published_at": 1, "event_id": 1}},
            {"$limit": limit},
        ]

    @_unavailable_on_outage
    async def published_event_ids(self, after: datetime, until: datetime, limit: int = 1000,
                                  after_id: str = "") -> list[tuple[str, datetime]]:
        fields = {"event_id": 1, "published_at": 1}
        pipeline = [*self._published(after, until, after_id, limit), {"$project": fields}]
        cursor = await self._col("feedback").aggregate(pipeline)
        return [(d["event_id"], d["published_at"]) async for d in cursor]  # tz_aware: already UTC

    @_unavailable_on_outage
    async def outbox_events(self, event_ids: list[str]) -> list[OutboxEntry]:
        if not event_ids:
            return []
        cursor = await self._col("feedback").aggregate([
            {"$match": {"outbox.event_id": {"$in": event_ids}}},
            {"$unwind": "$outbox"},
            {"$match": {"outbox.event_id": {"$in": event_ids}}},
            {"$replaceRoot": {"newRoot": "$outbox"}},
        ])
        return [OutboxEntry.model_validate(d) async for d in cursor]

    async def _pending(self, *stages: Doc) -> list[Doc]:
        pipeline: list[Doc] = [
            {"$match": PENDING},
            {"$unwind": "$outbox"},
            {"$match": {"outbox.published_at": None}},
            {"$replaceRoot": {"newRoot": "$outbox"}},
            *stages,
        ]
        cursor = await self._col("feedback").aggregate(pipeline)
        return [d async for d in cursor]

    @_unavailable_on_outage
    async def pending_outbox(self, limit: int = 500) -> list[OutboxEntry]:
        docs = await self._pending({"$sort": {"created_at": 1, "event_id": 1}}, {"$limit": limit})
        return [OutboxEntry.model_validate(d) for d in docs]

    @_unavailable_on_outage
    async def mark_published(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        await self._col("feedback").update_many(
            {"outbox.event_id": {"$in": event_ids}},
            {"$set": {"outbox.$[e].published_at": utcnow()}},
            array_filters=[{"e.event_id": {"$in": event_ids}, "e.published_at": None}],
        )

    @_unavailable_on_outage
    async def outbox_backlog(self) -> tuple[int, datetime | None]:
        docs = await self._pending(
            {"$group": {"_id": None, "count": {"$sum": 1}, "oldest": {"$min": "$created_at"}}}
        )
        if not docs:
            return 0, None
        return docs[0]["count"], docs[0]["oldest"]

    # Training runs and models
    @_unavailable_on_outage
    async def save_training_run(self, run: TrainingRun) -> None:
        doc = {"_id": run.run_id, **run.model_dump(mode="python")}
        await self._col("training_runs").replace_one({"_id": run.run_id}, doc, upsert=True)

    @_unavailable_on_outage
    async def list_training_runs(self, limit: int = 50) -> list[TrainingRun]:
        cursor = self._col("training_runs").find({}).sort("started_at", DESCENDING).limit(limit)
        return [TrainingRun.model_validate(d) async for d in cursor]

    @_unavailable_on_outage
    async def save_model_version(self, version: ModelVersion) -> None:
        doc = {"_id": version.version, **version.model_dump(mode="python")}
        await self._col("model_versions").replace_one({"_id": version.version}, doc, upsert=True)

    @_unavailable_on_outage
    async def list_model_versions(self) -> list[ModelVersion]:
        cursor = self._col("model_versions").find({}).sort("_id", ASCENDING)
        return [ModelVersion.model_validate(d) async for d in cursor]

    # Online experiments
    @_unavailable_on_outage
    async def save_experiment(self, experiment: Experiment) -> None:
        doc = {"_id": experiment.experiment_id, **experiment.model_dump(mode="python")}
        await self._col("experiments").replace_one({"_id": experiment.experiment_id}, doc, upsert=True)

    @_unavailable_on_outage
    async def get_experiment(self, experiment_id: str) -> Experiment | None:
        doc = await self._col("experiments").find_one({"_id": experiment_id})
        return Experiment.model_validate(doc) if doc else None

    @_unavailable_on_outage
    async def list_experiments(self, limit: int = 50) -> list[Experiment]:
        cursor = self._col("experiments").find({}).sort([("started_at", DESCENDING), ("_id", DESCENDING)])
        return [Experiment.model_validate(d) async for d in cursor.limit(limit)]

    @_unavailable_on_outage
    async def count_impressions(self, experiment_id: str) -> int:
        return await self._col("inferences").count_documents({"interleaving.experiment_id": experiment_id})

    @_unavailable_on_outage
    async def experiment_feedback(self, experiment_id: str) -> list[Feedback]:
        cursor = self._col("feedback").find({"interleaved.experiment_id": experiment_id},
                                            FEEDBACK_FIELDS).sort("_id", ASCENDING)
        return [Feedback.model_validate(d) async for d in cursor]

    # Resource vectors
    @_unavailable_on_outage
    async def get_vectors(self, model_id: str, text_hashes: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        # Chunked: a whole catalogue's keys in one `$in` would make a query document of megabytes.
        for start in range(0, len(text_hashes), VECTORS_PER_QUERY):
            cursor = self._col("vectors").find(
                {"model_id": model_id, "text_hash": {"$in": text_hashes[start:start + VECTORS_PER_QUERY]}},
                {"_id": 0, "text_hash": 1, "vector": 1})
            found.update({d["text_hash"]: np.frombuffer(d["vector"], dtype=np.float32) async for d in cursor})
        return found

    @_unavailable_on_outage
    async def put_vectors(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        docs = [{"model_id": model_id, "text_hash": key,
                 "vector": Binary(np.asarray(v, dtype=np.float32).tobytes())} for key, v in vectors.items()]
        try:
            await self._col("vectors").insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            _raise_unless_duplicates(exc)  # the first vector stored for a key stays

    @_unavailable_on_outage
    async def count_vectors(self, model_id: str) -> int:
        return await self._col("vectors").count_documents({"model_id": model_id})


def _raise_unless_duplicates(exc: BulkWriteError) -> None:
    """An unordered insert whose only failures are keys already stored did all it had to do."""
    if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
        raise exc
    if exc.details.get("writeConcernErrors"):
        raise exc


def _entry(entry: OutboxEntry) -> Doc:
    return {**entry.model_dump(mode="python"), "published_at": None}
