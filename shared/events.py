"""Versioned events that travel on Kafka, one topic per event type."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FEEDBACK_TOPIC = "eduranker.feedback.v1"
TRAINING_REQUESTED_TOPIC = "eduranker.training.requested.v1"
MODEL_READY_TOPIC = "eduranker.model.ready.v1"
EXPERIMENT_DECIDED_TOPIC = "eduranker.experiment.decided.v1"
ALL_TOPICS = (FEEDBACK_TOPIC, TRAINING_REQUESTED_TOPIC, MODEL_READY_TOPIC, EXPERIMENT_DECIDED_TOPIC)

Label = Literal["like", "dislike"]
Team = Literal["champion", "challenger"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    """Common envelope: consumers de-duplicate on `event_id`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(default_factory=new_id)
    occurred_at: datetime = Field(default_factory=utcnow)
    # Only the versions this code understands: a newer producer's events are set aside, not guessed at.
    schema_version: Literal[1] = 1


class Interleaved(BaseModel):
    """Where a rated result came from when its list interleaved two rankers (shared/interleaving.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment_id: str
    team: Team
    query_key: str = Field(default="", description="Hash of the normalised query, for per-query credit.")
    share: float | None = Field(default=None, ge=0, le=1,
                                description="The challenger's share of the result's credit (None: by team).")


class FeedbackEvent(Event):
    """A like/dislike given on one shown result; `previous_label` is set when a user changes it."""

    feedback_id: str
    inference_id: str
    resource_id: str
    label: Label
    previous_label: Label | None = None
    rank: int
    model_version: str
    user_id: str | None = None
    session_id: str | None = None
    interleaved: Interleaved | None = None


class Counts(BaseModel):
    """Snapshot of the aggregator's counters."""

    total: int = 0
    like: int = 0
    dislike: int = 0
    new_since_training: int = 0
    new_like: int = 0
    new_dislike: int = 0


class TrainingRequestedEvent(Event):
    reason: Literal["threshold", "schedule", "manual"]
    counts: Counts = Field(default_factory=Counts)
    # A manual request's own values (epochs, batch_size, ...); they win over the trainer's settings.
    hyperparameters: dict[str, float | int | bool | str] = Field(default_factory=dict)
    include_test: bool | None = None  # None: the trainer's EDURANKER_TRAIN_INCLUDE_TEST


class ModelReadyEvent(Event):
    """Sent for every finished run and every change of what is served.

    `promoted`: a new champion; `challenger`: a version users now try against the champion
    (experiment `experiment_id`); `retired`: a challenger leaves serving. Rerankers follow the
    registry and the store's running experiment on each of these; the rest report a run.
    """

    version: str
    location: str = Field(description="Version folder relative to the registry root.")
    base_model: str
    metrics: dict[str, float] = Field(default_factory=dict)
    decision: Literal["promoted", "challenger", "retired", "rejected", "skipped", "failed"]
    reason: str = ""
    request_event_id: str | None = None
    experiment_id: str | None = None


class ExperimentDecidedEvent(Event):
    """Users decided an online experiment (the aggregator's test); the trainer acts on it."""

    experiment_id: str
    kind: Literal["challenge", "watch"]
    champion: str
    challenger: str
    decision: Literal["promote", "retire", "rollback", "keep"]
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)


TOPIC_EVENTS: dict[str, type[Event]] = {
    FEEDBACK_TOPIC: FeedbackEvent,
    TRAINING_REQUESTED_TOPIC: TrainingRequestedEvent,
    MODEL_READY_TOPIC: ModelReadyEvent,
    EXPERIMENT_DECIDED_TOPIC: ExperimentDecidedEvent,
}


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode(topic: str, payload: bytes) -> Event:
    """Raises `pydantic.ValidationError` for messages that do not match the topic's schema."""
    return TOPIC_EVENTS[topic].model_validate_json(payload)
