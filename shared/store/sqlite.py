"""SQLite backend: the embedded default, WAL mode so several processes share one file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import numpy as np

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
from shared.store.action_plan import FEEDBACK, INTERACTIONS, A, ActionKind, Out, plan_actions
from shared.store.interface import Store, StoreUnavailableError
from shared.vocab import ResourceState

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    id TEXT PRIMARY KEY, doc TEXT NOT NULL, updated_at TEXT NOT NULL, seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS inferences (
    inference_id TEXT PRIMARY KEY, model_version TEXT NOT NULL, doc TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inferences_version ON inferences(model_version);
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id TEXT PRIMARY KEY, inference_id TEXT NOT NULL, resource_id TEXT NOT NULL,
    user_key TEXT NOT NULL, request_id TEXT, doc TEXT NOT NULL,
    UNIQUE (inference_id, resource_id, user_key)
);
CREATE UNIQUE INDEX IF NOT EXISTS feedback_request ON feedback(request_id)
    WHERE request_id IS NOT NULL;
-- Every request id a feedback absorbed, not just its latest: a late retry of an earlier request
-- must stay a no-op instead of flipping the label back.
CREATE TABLE IF NOT EXISTS feedback_requests (
    request_id TEXT PRIMARY KEY, feedback_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS interactions (
    interaction_id TEXT PRIMARY KEY, inference_id TEXT NOT NULL, resource_id TEXT NOT NULL,
    user_key TEXT NOT NULL, request_id TEXT, doc TEXT NOT NULL, experiment_id TEXT,
    UNIQUE (inference_id, resource_id, user_key)
);
CREATE TABLE IF NOT EXISTS interaction_requests (
    request_id TEXT PRIMARY KEY, interaction_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY, topic TEXT NOT NULL, key TEXT NOT NULL, payload TEXT NOT NULL,
    created_at TEXT NOT NULL, published_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(published_at, created_at);
CREATE TABLE IF NOT EXISTS training_runs (
    run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    version TEXT PRIMARY KEY, doc TEXT NOT NULL
);
-- One row rewritten by `ping` after a failed write, to learn when writes work again.
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, doc TEXT NOT NULL
);
-- A rowid table, not WITHOUT ROWID: rows of 1.5 kB would spill to overflow pages there (measured
-- twice the file size and four times the write time at 100,000 vectors of 384 floats).
CREATE TABLE IF NOT EXISTS vectors (
    model_id TEXT NOT NULL, text_hash TEXT NOT NULL, vector BLOB NOT NULL,
    UNIQUE (model_id, text_hash)
);
"""
VECTORS_PER_QUERY = 900
"""Keys per `IN (...)` query (vectors, outbox events): under SQLite's bound-parameter limit on every
version still in use."""
FEEDBACK_PER_QUERY = 200
"""Feedback looked up per query: four parameters each (request id and identity), under that limit too."""
# Columns added after a file may have been created: (table, column, declaration), then their indexes.
COLUMNS = (("inferences", "experiment_id", "TEXT"), ("feedback", "experiment_id", "TEXT"),
           ("resources", "state", "TEXT NOT NULL DEFAULT 'live'"))
INDEXES = """
CREATE INDEX IF NOT EXISTS inferences_experiment ON inferences(experiment_id)
    WHERE experiment_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS feedback_experiment ON feedback(experiment_id)
    WHERE experiment_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS interactions_experiment ON interactions(experiment_id)
    WHERE experiment_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS inferences_created ON inferences(created_at);
CREATE INDEX IF NOT EXISTS resources_updated ON resources(updated_at);
CREATE INDEX IF NOT EXISTS resources_seq ON resources(seq);
CREATE INDEX IF NOT EXISTS vectors_text ON vectors(text_hash);
"""


@dataclass(frozen=True)
class ActionTable:
    """Where one kind of action lives: its table, its id column, its request ids' table."""

    name: str
    id_column: str
    requests: str
    model: type[StoredAction]
    kind: ActionKind


ACTIONS = {"feedback": ActionTable("feedback", "feedback_id", "feedback_requests", Feedback, FEEDBACK),
           "interactions": ActionTable("interactions", "interaction_id", "interaction_requests", Interaction,
                                       INTERACTIONS)}


class SQLiteStore(Store):
    def __init__(self, path: str | Path, timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._db: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        # Reads go on when writes fail (a full disk, a lock held elsewhere): remember the failure so
        # that `ping`, hence /ready, reports it until a write works again.
        self._write_failed: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(url.removeprefix("sqlite:///"))

    async def init(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
        await self._db.executescript(SCHEMA)
        for table, column, declaration in COLUMNS:
            present = {row[1] for row in await self._db.execute_fetchall(f"PRAGMA table_info({table})")}
            if column not in present:
                await self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        await self._db.executescript(INDEXES)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailableError("store is not open")
        return self._db

    @asynccontextmanager
    async def _tx(self, begin: str = "BEGIN IMMEDIATE") -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction at a time per process; IMMEDIATE takes the file lock up front."""
        async with self._write_lock:
            await self._begin(begin)
            try:
                yield self.db
                await self.db.execute("COMMIT")
            except BaseException as exc:
                # SQLite may have rolled back already (I/O errors, a full disk): nothing half-written.
                with suppress(sqlite3.OperationalError):
                    await self.db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    self._write_failed = f"store write failed: {exc}"
                    raise StoreUnavailableError(self._write_failed) from exc
                raise
            if begin != "BEGIN":
                self._write_failed = None

    async def _begin(self, begin: str) -> None:
        """BEGIN, tried again until `timeout_s`: under concurrent writers from several processes,
        WAL mode sometimes answers "database is locked" at once instead of waiting its busy timeout."""
        deadline = time.monotonic() + self.timeout_s
        delay = 0.01
        while True:
            try:
                await self.db.execute(begin)
                return
            except sqlite3.OperationalError as exc:
                if time.monotonic() + delay >= deadline:
                    self._write_failed = f"store busy: {exc}"
                    raise StoreUnavailableError(self._write_failed) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _all(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        try:
            async with self.db.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(str(exc)) from exc

    async def ping(self) -> None:
        """Reads, and after a failed write a probe write: the store is usable only when both work."""
        await self._all("SELECT 1")
        if self._write_failed is None:
            return
        async with self._tx() as db:
            await db.execute("INSERT OR REPLACE INTO write_probe (id, at) VALUES (1, ?)",
                             (utcnow().isoformat(),))

    # Resources
    @staticmethod
    async def _next_seq(db: aiosqlite.Connection) -> int:
        rows = await (await db.execute("SELECT COALESCE(MAX(seq), 0) FROM resources")).fetchone()
        return rows[0] + 1

    async def upsert_resources(self, resources: list[Resource]) -> int:
        now = _iso(utcnow())
        async with self._tx() as db:
            seq = await self._next_seq(db)
            await db.executemany(
                "INSERT INTO resources (id, doc, updated_at, seq, state) VALUES (?, ?, ?, ?, 'live') "
                "ON CONFLICT(id) DO UPDATE SET doc=excluded.doc, updated_at=excluded.updated_at, "
                "seq=excluded.seq, state=CASE resources.state WHEN 'hidden' THEN 'hidden' ELSE 'live' END",
                [(r.id, r.model_dump_json(), now, seq) for r in resources],
            )
        return len(resources)

    async def get_resources(self, ids: list[str]) -> dict[str, Resource]:
        found: dict[str, Resource] = {}
        for chunk in _chunks(ids):
            rows = await self._all(f"SELECT doc FROM resources WHERE id IN ({','.join('?' * len(chunk))}) "
                                   "AND state = 'live'", tuple(chunk))
            found.update((r.id, r) for r in (Resource.model_validate_json(row[0]) for row in rows))
        return found

    async def list_resources(self) -> list[Resource]:
        rows = await self._all("SELECT doc FROM resources WHERE state = 'live' ORDER BY id")
        return [Resource.model_validate_json(r[0]) for r in rows]

    async def resource_ids(self) -> list[str]:
        rows = await self._all("SELECT id FROM resources WHERE state != 'removed' ORDER BY id")
        return [r[0] for r in rows]

    async def resource_states(self, ids: list[str]) -> dict[str, ResourceState]:
        found: dict[str, ResourceState] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows = await self._all(f"SELECT id, state FROM resources WHERE id IN ({marks})", tuple(chunk))
            found.update((r[0], r[1]) for r in rows)
        return found

    async def set_hidden(self, ids: list[str], hidden: bool) -> int:
        before, after = ("live", "hidden") if hidden else ("hidden", "live")
        changed = 0
        async with self._tx() as db:
            seq, now = await self._next_seq(db), _iso(utcnow())
            for chunk in _chunks(ids):
                cursor = await db.execute(
                    f"UPDATE resources SET state = ?, updated_at = ?, seq = ? WHERE state = ? "
                    f"AND id IN ({','.join('?' * len(chunk))})", (after, now, seq, before, *chunk))
                changed += cursor.rowcount
        return changed

    async def remove_resources(self, ids: list[str]) -> int:
        removed = 0
        async with self._tx() as db:
            seq, now = await self._next_seq(db), _iso(utcnow())
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                docs = await db.execute_fetchall(
                    f"SELECT doc FROM resources WHERE state != 'removed' AND id IN ({marks})", tuple(chunk))
                hashes = sorted({text_hash(Resource.model_validate_json(d[0]).text) for d in docs})
                # The tombstone keeps the id alone: the resource's content is deleted.
                cursor = await db.execute(
                    f"UPDATE resources SET state = 'removed', doc = json_object('id', id), updated_at = ?, "
                    f"seq = ? WHERE state != 'removed' AND id IN ({marks})", (now, seq, *chunk))
                removed += cursor.rowcount
                if hashes:
                    keys = ",".join("?" * len(hashes))
                    await db.execute(f"DELETE FROM vectors WHERE text_hash IN ({keys})", tuple(hashes))
        return removed

    async def resources_since(self, after: datetime) -> list[Resource]:
        rows = await self._all("SELECT doc FROM resources WHERE updated_at >= ? AND state = 'live' "
                               "ORDER BY seq, id", (_iso(after),))
        return [Resource.model_validate_json(r[0]) for r in rows]

    async def withdrawn_since(self, after: datetime) -> list[str]:
        rows = await self._all("SELECT id FROM resources WHERE updated_at >= ? AND state != 'live' "
                               "ORDER BY seq, id", (_iso(after),))
        return [r[0] for r in rows]

    async def resources_version(self) -> str:
        # Every write takes a new sequence number (a removal keeps its row): the highest says it all.
        rows = await self._all("SELECT COALESCE(MAX(seq), 0) FROM resources")
        return str(rows[0][0])

    # Inferences
    async def add_inferences(self, inferences: list[Inference]) -> None:
        async with self._tx() as db:
            await db.executemany(
                "INSERT OR IGNORE INTO inferences (inference_id, model_version, doc, created_at, "
                "experiment_id) VALUES (?, ?, ?, ?, ?)",
                [
                    (i.inference_id, i.model_version, i.model_dump_json(), i.created_at.isoformat(),
                     i.interleaving.experiment_id if i.interleaving else None)
                    for i in inferences
                ],
            )

    async def get_inference(self, inference_id: str) -> Inference | None:
        return (await self.get_inferences([inference_id])).get(inference_id)

    async def get_inferences(self, ids: list[str]) -> dict[str, Inference]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self._all(
            f"SELECT doc FROM inferences WHERE inference_id IN ({marks})", tuple(ids)
        )
        found = (Inference.model_validate_json(r[0]) for r in rows)
        return {i.inference_id: i for i in found}

    async def count_inferences(self) -> dict[str, int]:
        rows = await self._all("SELECT model_version, COUNT(*) FROM inferences GROUP BY model_version")
        return {r[0]: r[1] for r in rows}

    async def recent_inferences(self, limit: int) -> list[Inference]:
        rows = await self._all("SELECT doc FROM inferences ORDER BY created_at DESC, rowid DESC LIMIT ?",
                               (limit,))
        return [Inference.model_validate_json(r[0]) for r in rows]

    # Feedback and interactions
    async def record_feedback(self, feedback: Feedback) -> FeedbackOutcome:
        return (await self.record_feedback_many([feedback]))[0]

    async def record_feedback_many(self, items: list[Feedback]) -> list[FeedbackOutcome]:
        return await self._record(ACTIONS["feedback"], items)

    async def record_interactions(self, items: list[Interaction]) -> list[InteractionOutcome]:
        return await self._record(ACTIONS["interactions"], items)

    async def _record(self, table: ActionTable, items: list[A]) -> list[Out]:
        """One transaction: one read of the rows the items can touch, then one write per table
        (per item, three statements cost the collector more than the rest of a request)."""
        async with self._tx() as db:
            plan = plan_actions(table.kind, items, *await self._stored_for(db, table, items))
            if plan.created:
                await db.executemany(
                    f"INSERT INTO {table.name} ({table.id_column}, inference_id, resource_id, user_key, "
                    "request_id, doc, experiment_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(f.record_id, f.inference_id, f.resource_id, f.identity[2], f.request_id,
                      f.model_dump_json(), f.interleaved.experiment_id if f.interleaved else None)
                     for f in plan.created.values()])
            if plan.changed:
                await db.executemany(
                    f"UPDATE {table.name} SET doc=?, request_id=? WHERE {table.id_column}=?",
                    [(f.model_dump_json(), f.request_id, f.record_id) for f in plan.changed.values()])
            if plan.requests:
                await db.executemany(
                    f"INSERT INTO {table.requests} (request_id, {table.id_column}) VALUES (?, ?)",
                    plan.requests)
            if plan.events:
                await db.executemany(
                    "INSERT INTO outbox (event_id, topic, key, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                    [(e.event_id, e.topic, e.key, e.payload, e.created_at.isoformat()) for e in plan.events])
        return plan.outcomes

    async def _stored_for(self, db: aiosqlite.Connection, table: ActionTable, items: list[A]) -> tuple[
            dict[str, A], dict[tuple[str, str, str], A]]:
        """The stored records the items name: by request id, and by identity."""
        by_request: dict[str, A] = {}
        by_identity: dict[tuple[str, str, str], A] = {}
        for start in range(0, len(items), FEEDBACK_PER_QUERY):
            chunk = items[start:start + FEEDBACK_PER_QUERY]
            requests = [f.request_id for f in chunk if f.request_id]
            # A join from the keys, not `(a, b, c) IN (VALUES ...)`, which SQLite answers by a scan.
            sql = (f"SELECT NULL, f.doc FROM (VALUES {','.join(['(?, ?, ?)'] * len(chunk))}) AS k "
                   f"CROSS JOIN {table.name} f ON f.inference_id = k.column1 AND f.resource_id = k.column2 "
                   "AND f.user_key = k.column3")
            if requests:
                sql += (f" UNION ALL SELECT r.request_id, f.doc FROM {table.requests} r JOIN {table.name} f "
                        f"USING ({table.id_column}) WHERE r.request_id IN ({','.join('?' * len(requests))})")
            rows = await db.execute_fetchall(sql, (*(part for f in chunk for part in f.identity), *requests))
            for request_id, doc in rows:
                stored = table.model.model_validate_json(doc)
                if request_id is None:
                    by_identity[stored.identity] = stored
                else:
                    by_request[request_id] = stored
        return by_request, by_identity

    async def list_feedback(self, include_test: bool = False) -> list[Feedback]:
        rows = await self._all("SELECT doc FROM feedback ORDER BY rowid")
        items = [Feedback.model_validate_json(r[0]) for r in rows]
        return [f for f in items if include_test or not f.is_test]

    async def list_interactions(self, include_test: bool = False) -> list[Interaction]:
        rows = await self._all("SELECT doc FROM interactions ORDER BY rowid")
        items = [Interaction.model_validate_json(r[0]) for r in rows]
        return [f for f in items if include_test or not f.is_test]

    async def feedback_snapshot(self, events_since: datetime) -> FeedbackSnapshot:
        # A read transaction: the reads see one moment, and in WAL mode writers go on meanwhile.
        async with self._tx("BEGIN") as db:
            try:
                docs = await db.execute_fetchall("SELECT doc FROM feedback ORDER BY rowid")
                opens = await db.execute_fetchall("SELECT doc FROM interactions ORDER BY rowid")
                ids = await db.execute_fetchall(
                    "SELECT event_id FROM outbox WHERE published_at IS NULL OR created_at >= ?",
                    (_iso(events_since),),
                )
            except sqlite3.OperationalError as exc:
                raise StoreUnavailableError(str(exc)) from exc
        return FeedbackSnapshot(feedback=[Feedback.model_validate_json(r[0]) for r in docs],
                                event_ids=[r[0] for r in ids],
                                interactions=[Interaction.model_validate_json(r[0]) for r in opens])

    async def published_events(self, after: datetime, until: datetime, limit: int = 1000,
                               after_id: str = "") -> list[OutboxEntry]:
        rows = await self._all(
            "SELECT event_id, topic, key, payload, created_at, published_at FROM outbox "
            "WHERE (published_at > ? OR (published_at = ? AND event_id > ?)) AND published_at <= ? "
            "ORDER BY published_at, event_id LIMIT ?",
            (_iso(after), _iso(after), after_id, _iso(until), limit),
        )
        return [
            OutboxEntry(event_id=r[0], topic=r[1], key=r[2], payload=r[3],
                        created_at=datetime.fromisoformat(r[4]), published_at=datetime.fromisoformat(r[5]))
            for r in rows
        ]

    async def published_event_ids(self, after: datetime, until: datetime, limit: int = 1000,
                                  after_id: str = "") -> list[tuple[str, datetime]]:
        rows = await self._all(
            "SELECT event_id, published_at FROM outbox "
            "WHERE (published_at > ? OR (published_at = ? AND event_id > ?)) AND published_at <= ? "
            "ORDER BY published_at, event_id LIMIT ?",
            (_iso(after), _iso(after), after_id, _iso(until), limit),
        )
        return [(r[0], datetime.fromisoformat(r[1])) for r in rows]

    async def outbox_events(self, event_ids: list[str]) -> list[OutboxEntry]:
        found: list[OutboxEntry] = []
        for start in range(0, len(event_ids), VECTORS_PER_QUERY):
            chunk = event_ids[start:start + VECTORS_PER_QUERY]
            rows = await self._all(
                "SELECT event_id, topic, key, payload, created_at, published_at FROM outbox "
                f"WHERE event_id IN ({','.join('?' * len(chunk))})", tuple(chunk))
            found += [OutboxEntry(event_id=r[0], topic=r[1], key=r[2], payload=r[3],
                                  created_at=datetime.fromisoformat(r[4]),
                                  published_at=datetime.fromisoformat(r[5]) if r[5] else None) for r in rows]
        return found

    async def pending_outbox(self, limit: int = 500) -> list[OutboxEntry]:
        rows = await self._all(
            "SELECT event_id, topic, key, payload, created_at FROM outbox "
            "WHERE published_at IS NULL ORDER BY created_at LIMIT ?",
            (limit,),
        )
        return [
            OutboxEntry(event_id=r[0], topic=r[1], key=r[2], payload=r[3],
                        created_at=datetime.fromisoformat(r[4]))
            for r in rows
        ]

    async def mark_published(self, event_ids: list[str]) -> None:
        now = utcnow().isoformat()
        async with self._tx() as db:
            await db.executemany(
                "UPDATE outbox SET published_at=? WHERE event_id=?", [(now, e) for e in event_ids]
            )

    async def outbox_backlog(self) -> tuple[int, datetime | None]:
        rows = await self._all(
            "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE published_at IS NULL"
        )
        count, oldest = rows[0]
        return count, datetime.fromisoformat(oldest) if oldest else None

    # Training runs and models
    async def save_training_run(self, run: TrainingRun) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO training_runs (run_id, started_at, doc) VALUES (?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET doc=excluded.doc",
                (run.run_id, run.started_at.isoformat(), run.model_dump_json()),
            )

    async def list_training_runs(self, limit: int = 50) -> list[TrainingRun]:
        rows = await self._all(
            "SELECT doc FROM training_runs ORDER BY started_at DESC LIMIT ?", (limit,)
        )
        return [TrainingRun.model_validate_json(r[0]) for r in rows]

    async def save_model_version(self, version: ModelVersion) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO model_versions (version, doc) VALUES (?, ?) "
                "ON CONFLICT(version) DO UPDATE SET doc=excluded.doc",
                (version.version, version.model_dump_json()),
            )

    async def list_model_versions(self) -> list[ModelVersion]:
        rows = await self._all("SELECT doc FROM model_versions ORDER BY version")
        return [ModelVersion.model_validate_json(r[0]) for r in rows]

    # Online experiments
    async def save_experiment(self, experiment: Experiment) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO experiments (experiment_id, started_at, doc) VALUES (?, ?, ?) "
                "ON CONFLICT(experiment_id) DO UPDATE SET doc=excluded.doc",
                (experiment.experiment_id, _iso(experiment.started_at), experiment.model_dump_json()),
            )

    async def get_experiment(self, experiment_id: str) -> Experiment | None:
        rows = await self._all("SELECT doc FROM experiments WHERE experiment_id = ?", (experiment_id,))
        return Experiment.model_validate_json(rows[0][0]) if rows else None

    async def list_experiments(self, limit: int = 50) -> list[Experiment]:
        rows = await self._all("SELECT doc FROM experiments ORDER BY started_at DESC, rowid DESC LIMIT ?",
                               (limit,))
        return [Experiment.model_validate_json(r[0]) for r in rows]

    async def count_impressions(self, experiment_id: str) -> int:
        rows = await self._all("SELECT COUNT(*) FROM inferences WHERE experiment_id = ?", (experiment_id,))
        return int(rows[0][0])

    async def experiment_interactions(self, experiment_id: str) -> list[Interaction]:
        rows = await self._all("SELECT doc FROM interactions WHERE experiment_id = ? ORDER BY rowid",
                               (experiment_id,))
        return [Interaction.model_validate_json(r[0]) for r in rows]

    async def experiment_feedback(self, experiment_id: str) -> list[Feedback]:
        rows = await self._all("SELECT doc FROM feedback WHERE experiment_id = ? ORDER BY rowid",
                               (experiment_id,))
        return [Feedback.model_validate_json(r[0]) for r in rows]

    # Resource vectors
    async def get_vectors(self, model_id: str, text_hashes: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(text_hashes), VECTORS_PER_QUERY):
            chunk = text_hashes[start:start + VECTORS_PER_QUERY]
            rows = await self._all(
                f"SELECT text_hash, vector FROM vectors WHERE model_id = ? AND text_hash IN "
                f"({','.join('?' * len(chunk))})", (model_id, *chunk))
            found.update((r[0], np.frombuffer(r[1], dtype=np.float32)) for r in rows)
        return found

    async def put_vectors(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        async with self._tx() as db:
            await db.executemany(
                "INSERT OR IGNORE INTO vectors (model_id, text_hash, vector) VALUES (?, ?, ?)",
                [(model_id, key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in vectors.items()],
            )

    async def count_vectors(self, model_id: str) -> int:
        rows = await self._all("SELECT COUNT(*) FROM vectors WHERE model_id = ?", (model_id,))
        return int(rows[0][0])


def _chunks(ids: list[str]) -> list[list[str]]:
    """Ids a query at a time, under SQLite's bound-parameter limit."""
    unique = list(dict.fromkeys(ids))
    return [unique[start:start + VECTORS_PER_QUERY] for start in range(0, len(unique), VECTORS_PER_QUERY)]


def _iso(moment: datetime) -> str:
    """Timestamps are stored as UTC ISO strings, which compare in time order."""
    return moment.astimezone(UTC).isoformat()
