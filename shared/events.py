"""Versioned events that travel on Kafka, one topic per event type (on the wire: `shared.messaging.codec`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.records import ActionBase, Counts, Interleaved, new_id, utcnow
from shared.vocab import ExperimentKind, Label, ReadyDecision, TrainingReason, UsersDecision

FEEDBACK_TOPIC = "eduranker.feedback.v1"
TRAINING_REQUESTED_TOPIC = "eduranker.training.requested.v1"
MODEL_READY_TOPIC = "eduranker.model.ready.v1"
EXPERIMENT_DECIDED_TOPIC = "eduranker.experiment.decided.v1"
INTERACTION_TOPIC = "eduranker.interaction.v1"
ALL_TOPICS = (FEEDBACK_TOPIC, TRAINING_REQUESTED_TOPIC, MODEL_READY_TOPIC, EXPERIMENT_DECIDED_TOPIC,
              INTERACTION_TOPIC)

class Event(BaseModel):
    """Common envelope: consumers de-duplicate on `event_id`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(default_factory=new_id)
    occurred_at: datetime = Field(default_factory=utcnow)
    # Only the versions this code understands: a newer producer's events are set aside, not guessed at.
    schema_version: Literal[1] = 1


class FeedbackEvent(Event, ActionBase):
    """A like/dislike given on one shown result; `previous_label` is set when a user changes it."""

    feedback_id: str
    label: Label
    previous_label: Label | None = None
    rank: int
    model_version: str
    interleaved: Interleaved | None = None


class InteractionEvent(Event, ActionBase):
    """A shown result opened (`dwell_s` None) or its person back after `dwell_s` seconds;
    `previous_dwell_s` is what a later report replaced (None: the open itself, or its first return)."""

    interaction_id: str
    rank: int
    model_version: str
    opened: bool = Field(description="True for the open itself, False for a later report of its dwell.")
    dwell_s: float | None = None
    previous_dwell_s: float | None = None
    interleaved: Interleaved | None = None


class TrainingRequestedEvent(Event):
    reason: TrainingReason
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
    decision: ReadyDecision
    reason: str = ""
    request_event_id: str | None = None
    experiment_id: str | None = None


class ExperimentDecidedEvent(Event):
    """Users decided an online experiment (the aggregator's test); the trainer acts on it."""

    experiment_id: str
    kind: ExperimentKind
    champion: str
    challenger: str
    decision: UsersDecision
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)


TOPIC_EVENTS: dict[str, type[Event]] = {
    FEEDBACK_TOPIC: FeedbackEvent,
    TRAINING_REQUESTED_TOPIC: TrainingRequestedEvent,
    MODEL_READY_TOPIC: ModelReadyEvent,
    EXPERIMENT_DECIDED_TOPIC: ExperimentDecidedEvent,
    INTERACTION_TOPIC: InteractionEvent,
}

