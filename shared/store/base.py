"""The store interface: the system of record for resources, inferences, feedback, runs, models.

Backends (SQLite embedded, MongoDB in production) implement `Store` and pass the same
contract tests (`tests/integration/test_store_contract.py`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from shared.events import FEEDBACK_TOPIC, FeedbackEvent, Interleaved, Label, Team, utcnow


class StoreUnavailableError(RuntimeError):
    """The store did not answer in time; HTTP services turn this into a 503."""


TITLE_MAX_CHARS = 500
DESCRIPTION_MAX_CHARS = 20_000


class Resource(BaseModel):
    id: str = Field(min_length=1, max_length=200)
    title: str = Field(min_length=1, max_length=TITLE_MAX_CHARS)
    description: str = Field(default="", max_length=DESCRIPTION_MAX_CHARS)
    subject: str = ""
    level: str = ""
    type: str = ""
    url: str | None = None
    language: str = "en"

    @property
    def text(self) -> str:
        """What the rankers read: title then description."""
        return f"{self.title}. {self.description}".strip()


class ShownResult(BaseModel):
    resource_id: str
    rank: int
    first_stage_score: float
    rerank_score: float | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    team: Team | None = Field(default=None, description="In an interleaved list: the ranker that placed it.")
    share: float | None = Field(default=None, description="In an interleaved list: the challenger's share "
                                "of the credit for this result (shared/interleaving.py).")


class InterleavingRecord(BaseModel):
    """What an interleaved search showed and why: enough to replay it or to score either ranker."""

    experiment_id: str
    kind: Literal["challenge", "watch"]
    champion: str
    challenger: str
    # Each ranker's own top results, best first: what it would have shown alone.
    champion_ranking: list[str]
    challenger_ranking: list[str]
    # How the list was drawn: probabilistic interleaving with this exponent; None in older logs
    # (team-draft interleaving).
    tau: float | None = None


class Inference(BaseModel):
    inference_id: str
    query: str
    model_version: str
    use_reranker: bool
    results: list[ShownResult]
    latency_ms: float
    created_at: datetime = Field(default_factory=utcnow)
    interleaving: InterleavingRecord | None = None

    def shown(self, resource_id: str) -> ShownResult | None:
        return next((r for r in self.results if r.resource_id == resource_id), None)


class Feedback(BaseModel):
    feedback_id: str
    inference_id: str
    resource_id: str
    label: Label
    rank: int
    model_version: str
    user_id: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    is_test: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    interleaved: Interleaved | None = None

    @property
    def identity(self) -> tuple[str, str, str]:
        """One feedback per (inference, resource, user); anonymous users share one slot."""
        return (self.inference_id, self.resource_id, self.user_id or self.session_id or "")


class FeedbackOutcome(BaseModel):
    status: Literal["created", "updated", "duplicate"]
    feedback: Feedback
    previous_label: Label | None = None


class OutboxEntry(BaseModel):
    event_id: str
    topic: str
    key: str
    payload: str
    created_at: datetime
    published_at: datetime | None = None


class FeedbackSnapshot(BaseModel):
    """Feedback as of one moment, with the ids of the outbox events that moment already reflects.

    A consumer that rebuilds its counts from `feedback` marks `event_ids` as seen, so the same
    changes arriving later as events are not counted twice.
    """

    feedback: list[Feedback]
    event_ids: list[str]


class TrainingRun(BaseModel):
    run_id: str
    request_event_id: str | None = None
    reason: str = ""
    # challenger: passed the offline safety checks, users decide online (`online` says how it ended).
    status: Literal["running", "promoted", "challenger", "rejected", "skipped", "failed"] = "running"
    detail: str = ""
    version: str | None = None
    pairs: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    # What users decided about this run's version online: experiment, decision, reason, evidence.
    online: list[dict[str, Any]] = Field(default_factory=list)


ExperimentDecision = Literal["promote", "retire", "rollback", "keep", "stopped", "superseded"]


class Experiment(BaseModel):
    """An online comparison of two versions by interleaving; the store's record is the truth.

    `challenge`: a new challenger against the champion. `watch`: after a promotion, the previous
    champion stays as the challenger on a small share, so that users can ask for it back.
    The limits are the settings when it started, so the trainer and aggregator judge it alike.
    """

    experiment_id: str
    kind: Literal["challenge", "watch"]
    champion: str
    challenger: str
    share: float
    alpha: float
    min_impressions: int
    max_impressions: int
    max_s: float
    status: Literal["running", "ended"] = "running"
    decision: ExperimentDecision | None = None
    reason: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)
    started_by: str = ""
    run_id: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None


class ModelVersion(BaseModel):
    version: str
    location: str
    # promoted: passed the gate, won online or promoted by an operator; challenger: being tried on
    # users; retired: rolled back (by users or an operator); rejected: by the gate or by users;
    # pruned: a rejected version whose folder retention removed (the entry stays as history).
    status: Literal["promoted", "challenger", "rejected", "retired", "pruned"]
    base_model: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


def feedback_event(feedback: Feedback, previous_label: Label | None) -> OutboxEntry:
    """The outbox row written in the same transaction as the feedback it announces."""
    event = FeedbackEvent(
        feedback_id=feedback.feedback_id,
        inference_id=feedback.inference_id,
        resource_id=feedback.resource_id,
        label=feedback.label,
        previous_label=previous_label,
        rank=feedback.rank,
        model_version=feedback.model_version,
        user_id=feedback.user_id,
        session_id=feedback.session_id,
        interleaved=feedback.interleaved,
    )
    return OutboxEntry(
        event_id=event.event_id,
        topic=FEEDBACK_TOPIC,
        key=feedback.inference_id,
        payload=event.model_dump_json(),
        created_at=event.occurred_at,
    )


@dataclass
class FeedbackPlan:
    """What a batch of feedback writes does: the answers, then each table's rows, written at once."""

    outcomes: list[FeedbackOutcome] = field(default_factory=list)
    created: dict[str, Feedback] = field(default_factory=dict)  # by feedback id: the row to insert
    changed: dict[str, Feedback] = field(default_factory=dict)  # by feedback id: a stored row's new state
    requests: list[tuple[str, str]] = field(default_factory=list)  # (request id, feedback id) absorbed
    events: list[OutboxEntry] = field(default_factory=list)


def plan_feedback(items: list[Feedback], by_request: dict[str, Feedback],
                  by_identity: dict[tuple[str, str, str], Feedback]) -> FeedbackPlan:
    """`record_feedback` for each item in order, decided in memory from one read of the stored rows
    they can touch (`by_request`: request id → its feedback; `by_identity`): a later item sees what
    an earlier one of the batch created or changed, as if each had been written on its own."""
    plan = FeedbackPlan()
    records = {f.feedback_id: f for f in (*by_request.values(), *by_identity.values())}
    request_to = {request_id: f.feedback_id for request_id, f in by_request.items()}
    identity_to = {key: f.feedback_id for key, f in by_identity.items()}
    for feedback in items:
        request_id = feedback.request_id
        if request_id and request_id in request_to:
            stored = records[request_to[request_id]]
            plan.outcomes.append(FeedbackOutcome(status="duplicate", feedback=stored))
            continue
        feedback_id = identity_to.get(feedback.identity)
        if feedback_id is None:
            outcome = FeedbackOutcome(status="created", feedback=feedback)
            feedback_id = identity_to[feedback.identity] = feedback.feedback_id
            plan.created[feedback_id] = records[feedback_id] = feedback
        else:
            stored = records[feedback_id]
            if stored.label == feedback.label:
                if request_id:
                    request_to[request_id] = feedback_id
                    plan.requests.append((request_id, feedback_id))
                plan.outcomes.append(FeedbackOutcome(status="duplicate", feedback=stored))
                continue
            updated = records[feedback_id] = stored.model_copy(update={
                "label": feedback.label, "updated_at": feedback.updated_at,
                "request_id": request_id or stored.request_id})
            (plan.created if feedback_id in plan.created else plan.changed)[feedback_id] = updated
            outcome = FeedbackOutcome(status="updated", feedback=updated, previous_label=stored.label)
        if request_id:
            request_to[request_id] = feedback_id
            plan.requests.append((request_id, feedback_id))
        plan.events.append(feedback_event(outcome.feedback, outcome.previous_label))
        plan.outcomes.append(outcome)
    return plan


class Store(abc.ABC):
    """Async access to EduRanker's records. Every method may raise `StoreUnavailableError`."""

    @abc.abstractmethod
    async def init(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None: ...

    # Resources
    @abc.abstractmethod
    async def upsert_resources(self, resources: list[Resource]) -> int: ...

    @abc.abstractmethod
    async def get_resources(self, ids: list[str]) -> dict[str, Resource]: ...

    @abc.abstractmethod
    async def list_resources(self) -> list[Resource]: ...

    @abc.abstractmethod
    async def resources_since(self, after: datetime) -> list[Resource]:
        """Resources added or updated at or after `after` (by the writer's clock): a replica
        follows the catalogue by reading these, not the whole catalogue again."""

    @abc.abstractmethod
    async def resources_version(self) -> str:
        """Changes whenever a resource is added or updated; replicas poll it to refresh indexes."""

    # Inferences
    @abc.abstractmethod
    async def add_inferences(self, inferences: list[Inference]) -> None: ...

    @abc.abstractmethod
    async def get_inference(self, inference_id: str) -> Inference | None: ...

    @abc.abstractmethod
    async def get_inferences(self, ids: list[str]) -> dict[str, Inference]: ...

    @abc.abstractmethod
    async def count_inferences(self) -> dict[str, int]:
        """Inferences per model version."""

    # Feedback and its outbox
    @abc.abstractmethod
    async def record_feedback(self, feedback: Feedback) -> FeedbackOutcome:
        """Store idempotently and, unless nothing changed, queue its event in the same transaction."""

    async def record_feedback_many(self, items: list[Feedback]) -> list[FeedbackOutcome]:
        """`record_feedback` for each item, in order; backends may share one transaction."""
        return [await self.record_feedback(f) for f in items]

    @abc.abstractmethod
    async def list_feedback(self, include_test: bool = False) -> list[Feedback]: ...

    @abc.abstractmethod
    async def feedback_snapshot(self, events_since: datetime) -> FeedbackSnapshot:
        """All feedback (test included), and the ids of its events created since `events_since` or
        still unpublished, read consistently: each id's change is in the feedback, and no change in
        the feedback lacks its id."""

    @abc.abstractmethod
    async def published_events(self, after: datetime, until: datetime, limit: int = 1000,
                               after_id: str = "") -> list[OutboxEntry]:
        """Events marked published in (`after`, `until`], `published_at` set, in (published_at,
        event_id) order; the next page starts after the last (`after`, `after_id`) read."""

    @abc.abstractmethod
    async def published_event_ids(self, after: datetime, until: datetime, limit: int = 1000,
                                  after_id: str = "") -> list[tuple[str, datetime]]:
        """(event_id, published_at) of `published_events`, same order and pages, without payloads:
        the aggregator re-reads recent ones every second, and needs the payloads of almost none."""

    @abc.abstractmethod
    async def outbox_events(self, event_ids: list[str]) -> list[OutboxEntry]:
        """The outbox entries of these ids that exist, in no particular order."""

    @abc.abstractmethod
    async def pending_outbox(self, limit: int = 500) -> list[OutboxEntry]: ...

    @abc.abstractmethod
    async def mark_published(self, event_ids: list[str]) -> None: ...

    @abc.abstractmethod
    async def outbox_backlog(self) -> tuple[int, datetime | None]:
        """Pending count and the oldest pending event's creation time."""

    # Training runs and the model index
    @abc.abstractmethod
    async def save_training_run(self, run: TrainingRun) -> None: ...

    @abc.abstractmethod
    async def list_training_runs(self, limit: int = 50) -> list[TrainingRun]: ...

    @abc.abstractmethod
    async def save_model_version(self, version: ModelVersion) -> None: ...

    @abc.abstractmethod
    async def list_model_versions(self) -> list[ModelVersion]: ...

    # Online experiments
    @abc.abstractmethod
    async def save_experiment(self, experiment: Experiment) -> None: ...

    @abc.abstractmethod
    async def get_experiment(self, experiment_id: str) -> Experiment | None: ...

    @abc.abstractmethod
    async def list_experiments(self, limit: int = 50) -> list[Experiment]:
        """Newest first."""

    async def running_experiment(self) -> Experiment | None:
        """The experiment users are deciding now; one at a time."""
        return next((e for e in await self.list_experiments(limit=20) if e.status == "running"), None)

    @abc.abstractmethod
    async def count_impressions(self, experiment_id: str) -> int:
        """Interleaved searches logged for the experiment."""

    @abc.abstractmethod
    async def experiment_feedback(self, experiment_id: str) -> list[Feedback]:
        """Feedback given on the experiment's interleaved results (test feedback included)."""

    # Resource vectors, by embedding model identity and text hash (shared/ml/vectors.py)
    @abc.abstractmethod
    async def get_vectors(self, model_id: str, text_hashes: list[str]) -> dict[str, np.ndarray]:
        """The stored float32 vectors of these texts for this model; texts without one are left out."""

    @abc.abstractmethod
    async def put_vectors(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        """Stores vectors by text hash; the first one stored for a key stays, so replicas that embed
        the same text at once keep agreeing on its vector."""

    @abc.abstractmethod
    async def count_vectors(self, model_id: str) -> int:
        """Vectors stored for this model."""
