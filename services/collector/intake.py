"""Feedback intake: validation against the logged inference, then a group-committed write.

Each accepted feedback is answered only once its store transaction has committed (with its
outbox event), so an HTTP 200 always means "stored". Three things keep that cheap:
- inferences never change once logged, so lookups are cached (bounded, least recent out);
- a request's items are looked up together and written in one transaction (all or none);
- requests that arrive while a write is in progress share the next transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.collector.outbox import OutboxRelay
from shared import metrics
from shared.batch_writer import BatchWriter
from shared.events import Interleaved, new_id
from shared.interleaving import query_key
from shared.store import Feedback, FeedbackOutcome, Inference, Store, StoreUnavailableError

log = logging.getLogger(__name__)

# The reranker writes inference records in the background; a click that follows a search
# within milliseconds may arrive first, so an unknown inference is looked up again briefly.
INFERENCE_GRACE_S = (0.05, 0.2, 0.5, 1.0)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inference_id: str = Field(min_length=1, max_length=64)
    resource_id: str = Field(min_length=1, max_length=200)
    feedback: Literal["like", "dislike"]
    user_id: str | None = Field(default=None, max_length=200)
    session_id: str | None = Field(default=None, max_length=200)
    request_id: str | None = Field(default=None, max_length=200,
                                   description="Client retry key: the same id twice is one feedback.")
    is_test: bool = Field(default=False, description="Generated feedback, excluded from training.")


class FeedbackResponse(BaseModel):
    feedback_id: str
    status: Literal["created", "updated", "duplicate"]
    label: Literal["like", "dislike"]
    previous_label: Literal["like", "dislike"] | None = None


class FeedbackError(Exception):
    """Feedback refused: `status` is the HTTP status, `message` says what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class InferenceCache:
    """Inferences are immutable once logged; only found ones are cached.

    Misses are looked up together, one query per call; concurrent misses for one id share one
    lookup (clicks on one result list arrive together).
    """

    def __init__(self, store: Store, size: int = 20_000) -> None:
        self.store = store
        self.size = size
        self._items: OrderedDict[str, Inference] = OrderedDict()
        self._loading: dict[str, asyncio.Future[dict[str, Inference]]] = {}

    async def get_many(self, inference_ids: list[str]) -> dict[str, Inference]:
        """The inferences of these ids that are logged."""
        found: dict[str, Inference] = {}
        waits: dict[str, asyncio.Future[dict[str, Inference]]] = {}
        missing: list[str] = []
        for inference_id in dict.fromkeys(inference_ids):
            cached = self._items.get(inference_id)
            if cached is not None:
                self._items.move_to_end(inference_id)
                found[inference_id] = cached
            elif inference_id in self._loading:
                waits[inference_id] = self._loading[inference_id]
            else:
                missing.append(inference_id)
        if missing:
            lookup = asyncio.ensure_future(self.store.get_inferences(missing))
            for inference_id in missing:
                self._loading[inference_id] = waits[inference_id] = lookup
            lookup.add_done_callback(lambda _: self._forget(missing))
        for inference_id, lookup in waits.items():
            inference = (await asyncio.shield(lookup)).get(inference_id)
            if inference is not None:
                found[inference_id] = self._items[inference_id] = inference
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return found

    def _forget(self, loaded: list[str]) -> None:
        for inference_id in loaded:
            self._loading.pop(inference_id, None)


Request = tuple[list[Feedback], asyncio.Future[list[FeedbackOutcome]]]
"""One request's feedback, written all or none, and where its outcomes go."""


class FeedbackWriter(BatchWriter[Request]):
    """Group commit: the requests queued when a transaction starts are written in it, in order."""

    def __init__(self, store: Store, max_batch: int = 256) -> None:
        super().__init__("feedback-writer", max_batch)  # items per transaction
        self.store = store

    def size(self, request: Request) -> int:
        return len(request[0])

    async def close(self) -> None:
        """Writes what is queued, then stops."""
        await self.flushed()
        await self.stop()

    async def record(self, feedback: Feedback) -> FeedbackOutcome:
        return (await self.record_many([feedback]))[0]

    async def record_many(self, items: list[Feedback]) -> list[FeedbackOutcome]:
        """All or none, in order: changes to the same result apply in the order given."""
        if not items:
            return []
        future: asyncio.Future[list[FeedbackOutcome]] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((items, future))
        return await future

    async def write(self, batch: list[Request]) -> None:
        try:
            await self._commit(batch)
        except Exception as exc:  # noqa: BLE001 - the callers get it; the writer goes on
            log.warning("event=feedback_write_failed size=%d error=%r", sum(map(self.size, batch)), exc)
            for _, future in batch:
                _settle(future, exc=exc)

    async def _commit(self, requests: list[Request]) -> None:
        try:
            outcomes = await self.store.record_feedback_many([f for items, _ in requests for f in items])
        except Exception as exc:
            if len(requests) == 1 or isinstance(exc, StoreUnavailableError):
                raise
            # The transaction rolled back: each request again on its own, so only the faulty one fails.
            log.warning("event=feedback_batch_failed requests=%d retrying=one_by_one", len(requests))
            for items, future in requests:
                try:
                    _settle(future, await self.store.record_feedback_many(items))
                except Exception as exc:  # noqa: BLE001 - handed to that request's caller
                    _settle(future, exc=exc)
            return
        start = 0
        for items, future in requests:
            _settle(future, outcomes[start:start + len(items)])
            start += len(items)


def _settle(future: asyncio.Future[list[FeedbackOutcome]], outcomes: list[FeedbackOutcome] | None = None,
            exc: BaseException | None = None) -> None:
    if future.done():  # the caller went away; its feedback is stored all the same
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(outcomes)  # type: ignore[arg-type]


async def validate(bodies: list[FeedbackRequest],
                   inferences: InferenceCache) -> list[Feedback | FeedbackError]:
    """For each request, the feedback to store or a `FeedbackError` saying why it cannot be."""
    ids = [body.inference_id for body in bodies]
    found = await inferences.get_many(ids)
    for delay in INFERENCE_GRACE_S:
        unknown = [i for i in ids if i not in found]
        if not unknown:
            break
        await asyncio.sleep(delay)
        found |= await inferences.get_many(unknown)
    return [check(body, found.get(body.inference_id)) for body in bodies]


def check(body: FeedbackRequest, inference: Inference | None) -> Feedback | FeedbackError:
    if inference is None:
        metrics.FEEDBACK.labels(body.feedback, "rejected").inc()
        return FeedbackError(404, f"inference {body.inference_id!r} not found: "
                                  "send the inference_id returned by a search")
    shown = inference.shown(body.resource_id)
    if shown is None:
        metrics.FEEDBACK.labels(body.feedback, "rejected").inc()
        return FeedbackError(422, f"resource {body.resource_id!r} was not among the results "
                                  f"shown for inference {body.inference_id!r}")
    interleaved = None
    if inference.interleaving is not None and shown.team is not None:
        interleaved = Interleaved(experiment_id=inference.interleaving.experiment_id, team=shown.team,
                                  query_key=query_key(inference.query), share=shown.share)
    return Feedback(
        feedback_id=new_id(), inference_id=body.inference_id, resource_id=body.resource_id,
        label=body.feedback, rank=shown.rank, model_version=inference.model_version,
        user_id=body.user_id, session_id=body.session_id, request_id=body.request_id,
        is_test=body.is_test, interleaved=interleaved,
    )


def answer(outcome: FeedbackOutcome) -> FeedbackResponse:
    status = "duplicate" if outcome.status == "duplicate" else "accepted"
    metrics.FEEDBACK.labels(outcome.feedback.label, status).inc()
    return FeedbackResponse(feedback_id=outcome.feedback.feedback_id, status=outcome.status,
                            label=outcome.feedback.label, previous_label=outcome.previous_label)


class Intake:
    """What a feedback request needs: lookups, the writer, and the relay to wake."""

    def __init__(self, inferences: InferenceCache, writer: FeedbackWriter, relay: OutboxRelay) -> None:
        self.inferences, self.writer, self.relay = inferences, writer, relay

    async def accept(self, body: FeedbackRequest) -> FeedbackResponse:
        checked = (await validate([body], self.inferences))[0]
        if isinstance(checked, FeedbackError):
            raise checked
        outcome = await self.writer.record(checked)
        if outcome.status != "duplicate":
            self.relay.wake.set()
        return answer(outcome)

    async def accept_many(self, bodies: list[FeedbackRequest]) -> list[FeedbackResponse | FeedbackError]:
        """Validates the items together (one lookup), then writes the valid ones in one transaction."""
        checked = await validate(bodies, self.inferences)
        valid = [f for f in checked if isinstance(f, Feedback)]
        outcomes = iter(await self.writer.record_many(valid))
        if valid:
            self.relay.wake.set()
        return [c if isinstance(c, FeedbackError) else answer(next(outcomes)) for c in checked]
