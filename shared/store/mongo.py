"""MongoDB backend (production), on PyMongo's async client.

An action's outbox events (a feedback's, an interaction's) live inside the action's document itself
(`outbox` array), so the action and the event announcing it are written by one single-document
update, atomic on any server; the outbox is read across both collections. A request of several
actions is written in one multi-document transaction, all or none: that needs a replica set (one
node is enough). On a standalone server, which has no transactions, its items are written one by
one, and the store says so once when it opens.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
from bson import Binary
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReplaceOne, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from shared.records import (
    Experiment,
    Feedback,
    FeedbackOutcome,
    FeedbackSnapshot,
    Inference,
    Interaction,
    InteractionOutcome,
    ModelVersion,
    OutboxEntry,
    Resource,
    StoredAction,
    TrainingRun,
    text_hash,
    utcnow,
)
from shared.store.action_plan import FEEDBACK, INTERACTIONS, A, ActionKind, Out
from shared.store.interface import Store, StoreUnavailableError
from shared.vocab import ResourceState

DEFAULT_DATABASE = "eduranker"
DUPLICATE_KEY = 11000
# Each retry means another writer changed the same feedback in between; more than this is a storm.
MAX_FEEDBACK_ATTEMPTS = 10
VECTORS_PER_QUERY = 5000
# What callers read back from a feedback document: the record, not the bookkeeping.
FEEDBACK_FIELDS = {"_id": 0, "outbox": 0, "user_key": 0, "request_ids": 0}
SNAPSHOT_FIELDS = {"_id": 0, "user_key": 0, "request_ids": 0, "outbox.payload": 0}
PENDING = {"outbox": {"$elemMatch": {"published_at": None}}}
# A resource's state; documents written before hiding existed have none and are live.
LIVE: Doc = {"state": {"$nin": ["hidden", "removed"]}}
NOT_REMOVED: Doc = {"state": {"$ne": "removed"}}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionCollection:
    """Where one kind of action lives: its collection, its id field, the fields a change rewrites."""

    name: str
    id_field: str
    model: type[StoredAction]
    kind: ActionKind
    state: tuple[str, ...]


FEEDBACK_COLLECTION = ActionCollection("feedback", "feedback_id", Feedback, FEEDBACK, ("label",))
INTERACTION_COLLECTION = ActionCollection("interactions", "interaction_id", Interaction, INTERACTIONS,
                                          ("dwell_s",))
ACTION_COLLECTIONS = (FEEDBACK_COLLECTION, INTERACTION_COLLECTION)

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


class _Raced(Exception):
    """Another writer changed the feedback between this write's read and its write: read again."""


class MongoStore(Store):
    def __init__(self, url: str, timeout_s: float = 10.0, tls_ca_file: Path | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.tls_ca_file = tls_ca_file
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None
        # Multi-document transactions: a replica set member or a mongos answers `hello` as one.
        self.transactions = False

    def client_options(self) -> dict[str, Any]:
        """What `AsyncMongoClient` is given besides the URL."""
        ms = int(self.timeout_s * 1000)
        # tz_aware: BSON dates come back as UTC-aware datetimes, like the models hold them.
        # w=majority, journal: a write is acknowledged once journaled (a replica set's default, said
        # here so a 200 means stored on any server; a kill loses nothing acknowledged).
        options: dict[str, Any] = {"serverSelectionTimeoutMS": ms, "timeoutMS": ms, "tz_aware": True,
                                   "tzinfo": UTC, "w": "majority", "journal": True}
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
        hello = await self._db.command("hello")
        self.transactions = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
        if not self.transactions:
            log.warning("event=mongo_without_transactions database=%s effect=%r", self._db.name,
                        "a standalone server: the items of one feedback request are stored one by one, "
                        "not all or none; run MongoDB as a replica set (one node is enough)")
        await self._col("inferences").create_index("model_version")
        await self._col("resources").create_index("updated_at")
        await self._col("vectors").create_index("text_hash", name="vector_text")
        await self._col("inferences").create_index("interleaving.experiment_id", sparse=True)
        await self._col("experiments").create_index([("started_at", DESCENDING)])
        await self._col("training_runs").create_index([("started_at", DESCENDING)])
        await self._col("vectors").create_index([("model_id", ASCENDING), ("text_hash", ASCENDING)],
                                                unique=True, name="vector_key")
        await self._col("inferences").create_index([("created_at", DESCENDING)])
        for actions in ACTION_COLLECTIONS:
            kind = actions.name.removesuffix("s")  # index names as the feedback's were first made
            await self._col(actions.name).create_indexes(
                [
                    IndexModel(
                        [("inference_id", ASCENDING), ("resource_id", ASCENDING), ("user_key", ASCENDING)],
                        unique=True,
                        name=f"{kind}_identity",
                    ),
                    IndexModel(actions.id_field, unique=True, name=actions.id_field),
                    # Every request id an action absorbed, so a late retry of an earlier one stays a
                    # no-op. Sparse: the field is absent, never empty, on actions sent without one.
                    IndexModel("request_ids", unique=True, sparse=True, name=f"{kind}_requests"),
                    IndexModel(
                        [("outbox.published_at", ASCENDING), ("outbox.created_at", ASCENDING)],
                        name="outbox_pending",
                    ),
                    IndexModel("outbox.event_id", name="outbox_event"),
                    IndexModel("interleaved.experiment_id", sparse=True, name=f"{kind}_experiment"),
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
    async def _bump_resources_version(self) -> None:
        """Bumped after the writes: a reader that saw the old version is sure to see a new one later."""
        await self._col("meta").update_one({"_id": "resources"}, {"$inc": {"seq": 1}}, upsert=True)

    @_unavailable_on_outage
    async def upsert_resources(self, resources: list[Resource]) -> int:
        if not resources:
            return 0
        now = utcnow()
        col = self._col("resources")
        ids = [r.id for r in resources]
        hidden = {d["_id"] async for d in col.find({"_id": {"$in": ids}, "state": "hidden"}, {"_id": 1})}
        await col.bulk_write(
            [
                ReplaceOne(
                    {"_id": r.id},
                    {"_id": r.id, **r.model_dump(mode="python"), "updated_at": now,
                     "state": "hidden" if r.id in hidden else "live"},
                    upsert=True,
                )
                for r in resources
            ],
            ordered=False,
        )
        await self._bump_resources_version()
        return len(resources)

    @_unavailable_on_outage
    async def get_resources(self, ids: list[str]) -> dict[str, Resource]:
        if not ids:
            return {}
        cursor = self._col("resources").find({"_id": {"$in": ids}, **LIVE})
        return {d["_id"]: Resource.model_validate(d) async for d in cursor}

    @_unavailable_on_outage
    async def list_resources(self) -> list[Resource]:
        cursor = self._col("resources").find(LIVE).sort("_id", ASCENDING)
        return [Resource.model_validate(d) async for d in cursor]

    @_unavailable_on_outage
    async def resource_ids(self) -> list[str]:
        cursor = self._col("resources").find(NOT_REMOVED, {"_id": 1}).sort("_id", ASCENDING)
        return [d["_id"] async for d in cursor]

    @_unavailable_on_outage
    async def resource_states(self, ids: list[str]) -> dict[str, ResourceState]:
        found: dict[str, ResourceState] = {}
        for chunk in _chunks(ids):
            cursor = self._col("resources").find({"_id": {"$in": chunk}}, {"_id": 1, "state": 1})
            found.update({d["_id"]: d.get("state", "live") async for d in cursor})
        return found

    @_unavailable_on_outage
    async def set_hidden(self, ids: list[str], hidden: bool) -> int:
        before = LIVE if hidden else {"state": "hidden"}
        changed = 0
        now = utcnow()
        for chunk in _chunks(ids):
            result = await self._col("resources").update_many(
                {"_id": {"$in": chunk}, **before}, {"$set": {"state": "hidden" if hidden else "live",
                                                             "updated_at": now}})
            changed += result.modified_count
        if changed:
            await self._bump_resources_version()
        return changed

    @_unavailable_on_outage
    async def remove_resources(self, ids: list[str]) -> int:
        col = self._col("resources")
        removed = 0
        now = utcnow()
        for chunk in _chunks(ids):
            docs = [d async for d in col.find({"_id": {"$in": chunk}, **NOT_REMOVED})]
            if not docs:
                continue
            # The tombstone keeps the id alone: the resource's content is deleted.
            tombstones = [ReplaceOne({"_id": d["_id"], **NOT_REMOVED},
                                     {"_id": d["_id"], "state": "removed", "updated_at": now}) for d in docs]
            result = await col.bulk_write(tombstones, ordered=False)
            removed += result.modified_count
            hashes = sorted({text_hash(Resource.model_validate(d).text) for d in docs})
            await self._col("vectors").delete_many({"text_hash": {"$in": hashes}})
        if removed:
            await self._bump_resources_version()
        return removed

    @_unavailable_on_outage
    async def resources_since(self, after: datetime) -> list[Resource]:
        cursor = self._col("resources").find({"updated_at": {"$gte": after}, **LIVE}).sort("_id", ASCENDING)
        return [Resource.model_validate(d) async for d in cursor]

    @_unavailable_on_outage
    async def withdrawn_since(self, after: datetime) -> list[str]:
        withdrawn = {"updated_at": {"$gte": after}, "state": {"$in": ["hidden", "removed"]}}
        cursor = self._col("resources").find(withdrawn, {"_id": 1}).sort("_id", ASCENDING)
        return [d["_id"] async for d in cursor]

    @_unavailable_on_outage
    async def resources_version(self) -> str:
        # Every write bumps the sequence (a removal keeps its document): it alone says what changed.
        meta = await self._col("meta").find_one({"_id": "resources"})
        return str(meta["seq"] if meta else 0)

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

    @_unavailable_on_outage
    async def recent_inferences(self, limit: int) -> list[Inference]:
        cursor = self._col("inferences").find({}).sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        return [Inference.model_validate(d) async for d in cursor.limit(limit)]

    # Feedback and interactions
    @_unavailable_on_outage
    async def record_feedback(self, feedback: Feedback) -> FeedbackOutcome:
        """Read, then write only if the state read is still there; a lost race re-reads and decides again."""
        return await self._record_one(FEEDBACK_COLLECTION, feedback)

    @_unavailable_on_outage
    async def record_feedback_many(self, items: list[Feedback]) -> list[FeedbackOutcome]:
        return await self._record_many(FEEDBACK_COLLECTION, items)

    @_unavailable_on_outage
    async def record_interactions(self, items: list[Interaction]) -> list[InteractionOutcome]:
        return await self._record_many(INTERACTION_COLLECTION, items)

    async def _record_one(self, actions: ActionCollection, item: A) -> Out:
        for _ in range(MAX_FEEDBACK_ATTEMPTS):
            try:
                return await self._record(actions, item)
            except _Raced:
                continue
        raise StoreUnavailableError(f"{actions.name} {item.identity} kept changing concurrently; retry")

    async def _record_many(self, actions: ActionCollection, items: list[A]) -> list[Out]:
        """All or none, in order, in one transaction; a transaction that lost a race is run again."""
        if len(items) < 2 or not self.transactions or self._client is None:
            return [await self._record_one(actions, f) for f in items]
        for _ in range(MAX_FEEDBACK_ATTEMPTS):
            # Not `with_transaction`: it retries a server that does not answer for two minutes, where
            # a caller must hear 503 within the timeout (and may send the request again, safely).
            async with self._client.start_session() as session:
                try:
                    async with await session.start_transaction():
                        outcomes = [await self._record(actions, f, session) for f in items]
                    return outcomes
                except _Raced:
                    continue
                except PyMongoError as exc:
                    if (isinstance(exc, ConnectionFailure) or exc.timeout
                            or not exc.has_error_label("TransientTransactionError")):
                        raise
                    continue  # a write conflict with a concurrent transaction: run it again
        raise StoreUnavailableError(f"{len(items)} {actions.name} kept changing concurrently; retry")

    async def _record(self, actions: ActionCollection, item: A,
                      session: AsyncClientSession | None = None) -> Out:
        """One decision on the state read; `_Raced` when another writer changed it before the write
        (in a transaction, the error that says so has already ended it: the caller starts again)."""
        col, kind, model = self._col(actions.name), actions.kind, actions.model
        inference_id, resource_id, user_key = item.identity
        identity = {"inference_id": inference_id, "resource_id": resource_id, "user_key": user_key}
        if item.request_id:
            seen = await col.find_one({"request_ids": item.request_id}, FEEDBACK_FIELDS, session=session)
            if seen is not None:
                return kind.outcome("duplicate", model.model_validate(seen), None)
        found = await col.find_one(identity, FEEDBACK_FIELDS, session=session)
        if found is None:
            entry = kind.event(item, None)
            doc = {**item.model_dump(mode="python"), "user_key": user_key, "outbox": [_entry(entry)]}
            if item.request_id:
                doc["request_ids"] = [item.request_id]
            try:
                await col.insert_one(doc, session=session)
            except DuplicateKeyError as exc:
                await self._check_record_id(actions, exc, item)
                raise _Raced from exc
            return kind.outcome("created", item, None)
        stored = model.model_validate(found)
        updated = kind.changed(stored, item)
        if updated is None:
            if item.request_id:
                try:
                    await col.update_one(identity, {"$addToSet": {"request_ids": item.request_id}},
                                         session=session)
                except DuplicateKeyError as exc:
                    raise _Raced from exc  # taken meanwhile: the next read says by which action
            return kind.outcome("duplicate", stored, None)
        entry = kind.event(updated, stored)
        changes = {name: getattr(updated, name) for name in (*actions.state, "updated_at", "request_id")}
        update: Doc = {"$set": changes, "$push": {"outbox": _entry(entry)}}
        if item.request_id:
            update["$addToSet"] = {"request_ids": item.request_id}
        try:
            # The state read in the filter: if someone changed it since, this matches nothing.
            won = await col.find_one_and_update(
                {**identity, **{name: getattr(stored, name) for name in actions.state}},
                update,
                projection=FEEDBACK_FIELDS,
                return_document=ReturnDocument.AFTER,
                session=session,
            )
        except DuplicateKeyError as exc:
            raise _Raced from exc  # its request id was just taken by another write: the next read says which
        if won is None:
            raise _Raced
        return kind.outcome("updated", model.model_validate(won), stored)

    async def _check_record_id(self, actions: ActionCollection, exc: DuplicateKeyError, item: A) -> None:
        """A clash on the record's id alone is a caller bug, not a race: retrying would spin. Read
        outside any transaction (the clash ended it), so it sees what is committed."""
        if actions.id_field not in (exc.details or {}).get("keyPattern", {}):
            return
        other = await self._col(actions.name).find_one({actions.id_field: item.record_id}, FEEDBACK_FIELDS)
        if other is not None and actions.model.model_validate(other).identity != item.identity:
            raise ValueError(f"{actions.id_field} {item.record_id!r} is already used by another "
                             f"{actions.name} record")

    @_unavailable_on_outage
    async def list_interactions(self, include_test: bool = False) -> list[Interaction]:
        query: Doc = {} if include_test else {"is_test": {"$ne": True}}
        cursor = self._col("interactions").find(query, FEEDBACK_FIELDS).sort("_id", ASCENDING)
        return [Interaction.model_validate(d) async for d in cursor]

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
        read: dict[str, list] = {}
        event_ids: list[str] = []
        since = events_since.astimezone(UTC)
        for actions in ACTION_COLLECTIONS:
            read[actions.name] = []
            cursor = self._col(actions.name).find({}, SNAPSHOT_FIELDS).sort("_id", ASCENDING)
            async for doc in cursor:
                for event in doc.pop("outbox", []):
                    if event.get("published_at") is None or event["created_at"] >= since:
                        event_ids.append(event["event_id"])
                read[actions.name].append(actions.model.model_validate(doc))
        return FeedbackSnapshot(feedback=read["feedback"], event_ids=event_ids,
                                interactions=read["interactions"])

    @_unavailable_on_outage
    async def published_events(self, after: datetime, until: datetime, limit: int = 1000,
                               after_id: str = "") -> list[OutboxEntry]:
        docs = await self._across(self._published(after, until, after_id, limit))
        return [OutboxEntry.model_validate(d) for d in _first_published(docs, limit)]

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
        docs = await self._across([*self._published(after, until, after_id, limit), {"$project": fields}])
        return [(d["event_id"], d["published_at"]) for d in _first_published(docs, limit)]  # tz_aware: UTC

    @_unavailable_on_outage
    async def outbox_events(self, event_ids: list[str]) -> list[OutboxEntry]:
        if not event_ids:
            return []
        docs = await self._across([
            {"$match": {"outbox.event_id": {"$in": event_ids}}},
            {"$unwind": "$outbox"},
            {"$match": {"outbox.event_id": {"$in": event_ids}}},
            {"$replaceRoot": {"newRoot": "$outbox"}},
        ])
        return [OutboxEntry.model_validate(d) for d in docs]

    async def _across(self, pipeline: list[Doc]) -> list[Doc]:
        """One aggregation run on every action collection (the outbox lives in both)."""
        out: list[Doc] = []
        for actions in ACTION_COLLECTIONS:
            cursor = await self._col(actions.name).aggregate(pipeline)
            out.extend([d async for d in cursor])
        return out

    async def _pending(self, *stages: Doc) -> list[Doc]:
        return await self._across([
            {"$match": PENDING},
            {"$unwind": "$outbox"},
            {"$match": {"outbox.published_at": None}},
            {"$replaceRoot": {"newRoot": "$outbox"}},
            *stages,
        ])

    @_unavailable_on_outage
    async def pending_outbox(self, limit: int = 500) -> list[OutboxEntry]:
        docs = await self._pending({"$sort": {"created_at": 1, "event_id": 1}}, {"$limit": limit})
        docs.sort(key=lambda d: (d["created_at"], d["event_id"]))
        return [OutboxEntry.model_validate(d) for d in docs[:limit]]

    @_unavailable_on_outage
    async def mark_published(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        now = utcnow()
        for actions in ACTION_COLLECTIONS:
            await self._col(actions.name).update_many(
                {"outbox.event_id": {"$in": event_ids}},
                {"$set": {"outbox.$[e].published_at": now}},
                array_filters=[{"e.event_id": {"$in": event_ids}, "e.published_at": None}],
            )

    @_unavailable_on_outage
    async def outbox_backlog(self) -> tuple[int, datetime | None]:
        docs = await self._pending(
            {"$group": {"_id": None, "count": {"$sum": 1}, "oldest": {"$min": "$created_at"}}}
        )
        if not docs:
            return 0, None
        return sum(d["count"] for d in docs), min(d["oldest"] for d in docs)

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
    async def experiment_interactions(self, experiment_id: str) -> list[Interaction]:
        cursor = self._col("interactions").find({"interleaved.experiment_id": experiment_id},
                                                FEEDBACK_FIELDS).sort("_id", ASCENDING)
        return [Interaction.model_validate(d) async for d in cursor]

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


def _chunks(ids: list[str]) -> list[list[str]]:
    """Ids a query at a time: a whole catalogue's in one `$in` would make a query of megabytes."""
    unique = list(dict.fromkeys(ids))
    return [unique[start:start + VECTORS_PER_QUERY] for start in range(0, len(unique), VECTORS_PER_QUERY)]


def _raise_unless_duplicates(exc: BulkWriteError) -> None:
    """An unordered insert whose only failures are keys already stored did all it had to do."""
    if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
        raise exc
    if exc.details.get("writeConcernErrors"):
        raise exc


def _entry(entry: OutboxEntry) -> Doc:
    return {**entry.model_dump(mode="python"), "published_at": None}


def _first_published(docs: list[Doc], limit: int) -> list[Doc]:
    """Events of several collections merged in (published_at, event_id) order, the first `limit`."""
    return sorted(docs, key=lambda d: (d["published_at"], d["event_id"]))[:limit]
