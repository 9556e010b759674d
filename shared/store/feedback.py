"""The actions' part of the store: feedback and interactions (opens and their dwell), each written
with its outbox event in one transaction."""

from __future__ import annotations

import abc
from datetime import datetime

from shared.records import (
    Feedback,
    FeedbackOutcome,
    FeedbackSnapshot,
    Interaction,
    InteractionOutcome,
    OutboxEntry,
)


class FeedbackStore(abc.ABC):
    """Feedback, interactions, and the outbox the collector's relay publishes from."""

    @abc.abstractmethod
    async def record_feedback(self, feedback: Feedback) -> FeedbackOutcome:
        """Store idempotently and, unless nothing changed, queue its event in the same transaction."""

    async def record_feedback_many(self, items: list[Feedback]) -> list[FeedbackOutcome]:
        """`record_feedback` for each item, in order; backends may share one transaction."""
        return [await self.record_feedback(f) for f in items]

    @abc.abstractmethod
    async def list_feedback(self, include_test: bool = False) -> list[Feedback]: ...

    @abc.abstractmethod
    async def record_interactions(self, items: list[Interaction]) -> list[InteractionOutcome]:
        """Opens and their dwell, in order, in one transaction: one record per (inference, resource,
        person), its dwell the longest reported; each change queues its event in that transaction."""

    @abc.abstractmethod
    async def list_interactions(self, include_test: bool = False) -> list[Interaction]: ...

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
