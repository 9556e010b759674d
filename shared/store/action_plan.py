"""How a batch of action writes (feedback, interactions) is decided, in memory, before a backend
writes it in one transaction: pure rules both backends share (tests/unit/test_feedback_plan.py).

Each kind of action is stored once per (inference, resource, person) (`StoredAction.identity`);
a request id already absorbed is a duplicate; doing the same thing again changes nothing; a change
(another label, a longer dwell) updates the record and announces it on the kind's topic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from shared.events import FEEDBACK_TOPIC, INTERACTION_TOPIC, FeedbackEvent, InteractionEvent
from shared.messaging.codec import encode
from shared.records import (
    Feedback,
    FeedbackOutcome,
    Interaction,
    InteractionOutcome,
    OutboxEntry,
    StoredAction,
)
from shared.vocab import Label, WriteStatus

A = TypeVar("A", bound=StoredAction)
Out = TypeVar("Out", FeedbackOutcome, InteractionOutcome)


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
    return OutboxEntry(event_id=event.event_id, topic=FEEDBACK_TOPIC, key=feedback.inference_id,
                       payload=encode(event).decode(), created_at=event.occurred_at)


def interaction_event(interaction: Interaction, previous: Interaction | None) -> OutboxEntry:
    """The outbox row of an open (`previous` None) or of a dwell reported for it."""
    event = InteractionEvent(
        interaction_id=interaction.interaction_id,
        inference_id=interaction.inference_id,
        resource_id=interaction.resource_id,
        rank=interaction.rank,
        model_version=interaction.model_version,
        opened=previous is None,
        dwell_s=interaction.dwell_s,
        previous_dwell_s=previous.dwell_s if previous is not None else None,
        user_id=interaction.user_id,
        session_id=interaction.session_id,
        interleaved=interaction.interleaved,
    )
    return OutboxEntry(event_id=event.event_id, topic=INTERACTION_TOPIC, key=interaction.inference_id,
                       payload=encode(event).decode(), created_at=event.occurred_at)


@dataclass(frozen=True)
class ActionKind(Generic[A, Out]):
    """What differs between kinds of action: when a new one changes a stored one (and into what),
    how a change is announced, and how its outcome is told."""

    changed: Callable[[A, A], A | None]
    event: Callable[[A, A | None], OutboxEntry]
    outcome: Callable[[WriteStatus, A, A | None], Out]


def _label_changed(stored: Feedback, new: Feedback) -> Feedback | None:
    if stored.label == new.label:
        return None
    return stored.model_copy(update={"label": new.label, "updated_at": new.updated_at,
                                     "request_id": new.request_id or stored.request_id})


def _dwell_grew(stored: Interaction, new: Interaction) -> Interaction | None:
    """A dwell reported for an open (or a longer one: the person stayed longer, in another tab);
    an open again, or a shorter dwell, changes nothing."""
    if new.dwell_s is None or (stored.dwell_s is not None and new.dwell_s <= stored.dwell_s):
        return None
    return stored.model_copy(update={"dwell_s": new.dwell_s, "updated_at": new.updated_at,
                                     "request_id": new.request_id or stored.request_id})


FEEDBACK = ActionKind[Feedback, FeedbackOutcome](
    changed=_label_changed,
    event=lambda record, previous: feedback_event(record, previous.label if previous else None),
    outcome=lambda status, record, previous: FeedbackOutcome(
        status=status, feedback=record, previous_label=previous.label if previous else None),
)
INTERACTIONS = ActionKind[Interaction, InteractionOutcome](
    changed=_dwell_grew,
    event=interaction_event,
    outcome=lambda status, record, previous: InteractionOutcome(
        status=status, interaction=record, previous_dwell_s=previous.dwell_s if previous else None),
)


@dataclass
class ActionPlan(Generic[A, Out]):
    """What a batch of action writes does: the answers, then each table's rows, written at once."""

    outcomes: list[Out] = field(default_factory=list)
    created: dict[str, A] = field(default_factory=dict)  # by record id: the row to insert
    changed: dict[str, A] = field(default_factory=dict)  # by record id: a stored row's new state
    requests: list[tuple[str, str]] = field(default_factory=list)  # (request id, record id) absorbed
    events: list[OutboxEntry] = field(default_factory=list)


def plan_actions(kind: ActionKind[A, Out], items: list[A], by_request: dict[str, A],
                 by_identity: dict[tuple[str, str, str], A]) -> ActionPlan[A, Out]:
    """Each item written in order, decided in memory from one read of the stored rows they can
    touch (`by_request`: request id → its record; `by_identity`): a later item sees what an earlier
    one of the batch created or changed, as if each had been written on its own."""
    plan: ActionPlan[A, Out] = ActionPlan()
    records = {f.record_id: f for f in (*by_request.values(), *by_identity.values())}
    request_to = {request_id: f.record_id for request_id, f in by_request.items()}
    identity_to = {key: f.record_id for key, f in by_identity.items()}
    for item in items:
        request_id = item.request_id
        if request_id and request_id in request_to:
            plan.outcomes.append(kind.outcome("duplicate", records[request_to[request_id]], None))
            continue
        record_id = identity_to.get(item.identity)
        previous: A | None = None
        if record_id is None:
            status: WriteStatus = "created"
            record_id = identity_to[item.identity] = item.record_id
            plan.created[record_id] = records[record_id] = record = item
        else:
            previous = records[record_id]
            updated = kind.changed(previous, item)
            if updated is None:
                if request_id:
                    request_to[request_id] = record_id
                    plan.requests.append((request_id, record_id))
                plan.outcomes.append(kind.outcome("duplicate", previous, None))
                continue
            status, record = "updated", updated
            records[record_id] = record
            (plan.created if record_id in plan.created else plan.changed)[record_id] = record
        if request_id:
            request_to[request_id] = record_id
            plan.requests.append((request_id, record_id))
        plan.events.append(kind.event(record, previous))
        plan.outcomes.append(kind.outcome(status, record, previous))
    return plan


def plan_feedback(items: list[Feedback], by_request: dict[str, Feedback],
                  by_identity: dict[tuple[str, str, str], Feedback]) -> ActionPlan[Feedback, FeedbackOutcome]:
    """`record_feedback` for each item in order (`plan_actions` for feedback)."""
    return plan_actions(FEEDBACK, items, by_request, by_identity)
