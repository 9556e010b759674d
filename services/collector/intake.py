"""Intake of actions on shown results (feedback, and opens with their dwell): validation against
the logged inference, then a group-committed write.

Each accepted action is answered only once its store transaction has committed (with its
outbox event), so an HTTP 200 always means "stored". Three things keep that cheap:
- inferences never change once logged, so lookups are cached (bounded, least recent out);
- a request's items are looked up together and written in one transaction (all or none);
- requests that arrive while a write is in progress share the next transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from services.collector.outbox import OutboxRelay
from shared import metrics
from shared.online.interleaving import query_key
from shared.records import (
    ActionBase,
    Feedback,
    FeedbackOutcome,
    Identifier,
    Inference,
    Interaction,
    InteractionOutcome,
    Interleaved,
    ShownResult,
    StoredAction,
    new_id,
)
from shared.store import Store, StoreUnavailableError
from shared.store.batch_writer import BatchWriter, being_cancelled
from shared.vocab import Label, ResourceState, WriteStatus
from shared.web.http import RequestBody

log = logging.getLogger(__name__)

# The reranker writes inference records in the background; a click that follows a search
# within milliseconds may arrive first, so an unknown inference is looked up again briefly.
INFERENCE_GRACE_S = (0.05, 0.2, 0.5, 1.0)


STORE_WAIT_S = 20.0
"""How long a request waits on the store (its inferences looked up, its action confirmed): past it, a
503 (safe to send again), before the 30 s at which HTTP clients commonly give up."""

MAX_DWELL_S = 86_400.0
"""A day: a dwell longer than that is a tab left open, not reading (and a typo's bound)."""


class ActionRequest(ActionBase, RequestBody):
    request_id: Identifier | None = Field(default=None,
                                          description="Client retry key: the same id twice is one action.")
    is_test: bool = Field(default=False, description="Generated traffic, excluded from training.")


class FeedbackRequest(ActionRequest):
    feedback: Label


class InteractionRequest(ActionRequest):
    dwell_s: float | None = Field(
        default=None, ge=0, le=MAX_DWELL_S,
        description="Seconds from opening the result to coming back to the list; leave it out when "
                    "reporting the open itself, and send it (same ids) once the person is back.")


class FeedbackResponse(BaseModel):
    feedback_id: str
    status: WriteStatus
    label: Label
    previous_label: Label | None = None


class InteractionResponse(BaseModel):
    interaction_id: str
    status: WriteStatus
    dwell_s: float | None = None
    previous_dwell_s: float | None = None


class FeedbackError(Exception):
    """An action refused: `status` is the HTTP status, `message` says what to change."""

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
            try:
                loaded = await asyncio.wait_for(asyncio.shield(lookup), STORE_WAIT_S)
            except TimeoutError:
                raise StoreUnavailableError(f"the store has not answered within {STORE_WAIT_S:g}s") from None
            except asyncio.CancelledError:
                if being_cancelled():
                    raise
                raise StoreUnavailableError("the store's driver interrupted the lookup; retry") from None
            inference = loaded.get(inference_id)
            if inference is not None:
                found[inference_id] = self._items[inference_id] = inference
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return found

    def _forget(self, loaded: list[str]) -> None:
        for inference_id in loaded:
            self._loading.pop(inference_id, None)


A = TypeVar("A", bound=StoredAction)
R = TypeVar("R", bound="ActionRequest")
Out = TypeVar("Out", FeedbackOutcome, InteractionOutcome)
Request = tuple[list[A], asyncio.Future[list[Out]]]
"""One request's actions, written all or none, and where their outcomes go."""


class ActionWriter(BatchWriter[Request], Generic[A, Out]):
    """Group commit: the requests queued when a transaction starts are written in it, in order.

    One per kind of action, each with the store's method that writes a batch of it. A caller hears
    within `timeout_s` (a 503 if the store has not confirmed by then: sent again with the same request
    id, the action is stored once), whatever the store or its driver does."""

    def __init__(self, name: str, write_many: Callable[[list[A]], Awaitable[list[Out]]],
                 max_batch: int = 256, timeout_s: float = STORE_WAIT_S) -> None:
        super().__init__(name, max_batch)  # items per transaction
        self.write_many = write_many
        self.timeout_s = timeout_s

    def size(self, request: Request) -> int:
        return len(request[0])

    async def record(self, item: A) -> Out:
        return (await self.record_many([item]))[0]

    async def record_many(self, items: list[A]) -> list[Out]:
        """All or none, in order: changes to the same result apply in the order given."""
        if not items:
            return []
        future: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self.queue.put_nowait((items, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            raise StoreUnavailableError(_unconfirmed(self.timeout_s)) from None

    async def write(self, batch: list[Request]) -> None:
        try:
            await asyncio.wait_for(self._commit(batch), self.timeout_s)
        except TimeoutError:
            raise StoreUnavailableError(_unconfirmed(self.timeout_s)) from None

    def failed(self, batch: list[Request], exc: BaseException) -> None:
        """Each caller hears why; an interrupted write is the store's failure (a 503), not the caller's."""
        if not isinstance(exc, Exception):
            exc = StoreUnavailableError(f"the store's write was interrupted ({exc!r}); send it again")
        for _, future in batch:
            _settle(future, exc=exc)

    async def _commit(self, requests: list[Request]) -> None:
        try:
            outcomes = await self.write_many([f for items, _ in requests for f in items])
        except Exception as exc:
            if len(requests) == 1 or isinstance(exc, StoreUnavailableError):
                raise
            # The transaction rolled back: each request again on its own, so only the faulty one fails.
            log.warning("event=action_batch_failed writer=%s requests=%d retrying=one_by_one", self.name,
                        len(requests))
            for items, future in requests:
                try:
                    _settle(future, await self.write_many(items))
                except Exception as exc:  # noqa: BLE001 - handed to that request's caller
                    _settle(future, exc=exc)
            return
        start = 0
        for items, future in requests:
            _settle(future, outcomes[start:start + len(items)])
            start += len(items)


def _unconfirmed(timeout_s: float) -> str:
    return (f"the store has not confirmed the write within {timeout_s:g}s; send it again (with the same "
            "request_id it is stored once)")


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Reads a settled future's exception, so that a caller who stopped waiting leaves no warning."""
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[list[Out]], outcomes: list[Out] | None = None,
            exc: BaseException | None = None) -> None:
    if future.done():  # the caller went away; its actions are stored all the same
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(outcomes)  # type: ignore[arg-type]


WITHDRAWN_STATUS = 410
"""A hidden or removed resource's answer: "Gone". Not 404, which says "send an id that exists": the
resource was shown, the search is right, and no retry helps while it is withdrawn (hidden ones may
come back: the message says which)."""


def withdrawn_message(resource_id: str, state: ResourceState) -> str:
    if state == "removed":
        return f"resource {resource_id!r} was removed from the catalogue: it takes no more feedback or opens"
    return (f"resource {resource_id!r} is hidden from the catalogue: it takes no feedback or opens while "
            "hidden")


async def refused_resources(store: Store, resource_ids: list[str]) -> dict[str, str]:
    """Which of these resources can no longer receive actions (feedback, opens), each with the
    message to answer with `WITHDRAWN_STATUS`: the hidden and the removed ones. Read from the store
    at each call, so that a removal takes effect at once on every collector."""
    states = await store.resource_states(list(dict.fromkeys(resource_ids)))
    return {resource_id: withdrawn_message(resource_id, state) for resource_id, state in states.items()
            if state != "live"}


async def validate(bodies: list[R], inferences: InferenceCache, store: Store,
                   build: Callable[[R, Inference, ShownResult], A]) -> list[A | FeedbackError]:
    """For each request, the record to store or a `FeedbackError` saying why it cannot be."""
    ids = [body.inference_id for body in bodies]
    found = await inferences.get_many(ids)
    for delay in INFERENCE_GRACE_S:
        unknown = [i for i in ids if i not in found]
        if not unknown:
            break
        await asyncio.sleep(delay)
        found |= await inferences.get_many(unknown)
    out: list[A | FeedbackError] = []
    for body in bodies:
        inference = found.get(body.inference_id)
        shown = shown_result(body, inference)
        out.append(shown if isinstance(shown, FeedbackError) else build(body, inference, shown))
    records = [r.resource_id for r in out if not isinstance(r, FeedbackError)]
    refused = await refused_resources(store, records) if records else {}
    return [FeedbackError(WITHDRAWN_STATUS, refused[r.resource_id])
            if not isinstance(r, FeedbackError) and r.resource_id in refused else r for r in out]


def shown_result(body: ActionBase, inference: Inference | None) -> ShownResult | FeedbackError:
    """The shown result an action names, or why it names none."""
    if inference is None:
        return FeedbackError(404, f"inference {body.inference_id!r} not found: "
                                  "send the inference_id returned by a search")
    shown = inference.shown(body.resource_id)
    if shown is None:
        return FeedbackError(422, f"resource {body.resource_id!r} was not among the results "
                                  f"shown for inference {body.inference_id!r}")
    return shown


def interleaved(inference: Inference, shown: ShownResult) -> Interleaved | None:
    """Where the result came from, when its list interleaved two rankers."""
    if inference.interleaving is None or shown.team is None:
        return None
    return Interleaved(experiment_id=inference.interleaving.experiment_id, team=shown.team,
                       query_key=query_key(inference.query), share=shown.share)


def feedback_record(body: FeedbackRequest, inference: Inference, shown: ShownResult) -> Feedback:
    return Feedback(
        feedback_id=new_id(), inference_id=body.inference_id, resource_id=body.resource_id,
        label=body.feedback, rank=shown.rank, model_version=inference.model_version,
        user_id=body.user_id, session_id=body.session_id, request_id=body.request_id,
        is_test=body.is_test, interleaved=interleaved(inference, shown),
    )


def interaction_record(body: InteractionRequest, inference: Inference, shown: ShownResult) -> Interaction:
    return Interaction(
        interaction_id=new_id(), inference_id=body.inference_id, resource_id=body.resource_id,
        dwell_s=body.dwell_s, rank=shown.rank, model_version=inference.model_version,
        user_id=body.user_id, session_id=body.session_id, request_id=body.request_id,
        is_test=body.is_test, interleaved=interleaved(inference, shown),
    )


def feedback_answer(outcome: FeedbackOutcome) -> FeedbackResponse:
    status = "duplicate" if outcome.status == "duplicate" else "accepted"
    metrics.FEEDBACK.labels(outcome.feedback.label, status).inc()
    return FeedbackResponse(feedback_id=outcome.feedback.feedback_id, status=outcome.status,
                            label=outcome.feedback.label, previous_label=outcome.previous_label)


def interaction_answer(outcome: InteractionOutcome) -> InteractionResponse:
    record = outcome.interaction
    status = "duplicate" if outcome.status == "duplicate" else "accepted"
    metrics.INTERACTIONS.labels(interaction_kind(record.dwell_s), status).inc()
    return InteractionResponse(interaction_id=record.interaction_id, status=outcome.status,
                               dwell_s=record.dwell_s, previous_dwell_s=outcome.previous_dwell_s)


def interaction_kind(dwell_s: float | None) -> str:
    """An open reported alone, or the return that gives its dwell (the metrics' label)."""
    return "open" if dwell_s is None else "return"


Response = TypeVar("Response", FeedbackResponse, InteractionResponse)


class Kind(Generic[R, A, Out, Response]):
    """One kind of action the collector takes: how a request becomes a record, how it is written,
    how it is answered, and which metric counts refusals."""

    def __init__(self, name: str, build: Callable[[R, Inference, ShownResult], A],
                 writer: ActionWriter[A, Out], answer: Callable[[Out], Response],
                 refused: Callable[[R], None]) -> None:
        self.name, self.build, self.writer, self.answer, self.refused = name, build, writer, answer, refused


class Intake:
    """What an action request needs: lookups (inferences, the catalogue's states), the writers, and
    the relay to wake."""

    def __init__(self, store: Store, inferences: InferenceCache,
                 feedback: ActionWriter[Feedback, FeedbackOutcome],
                 interactions: ActionWriter[Interaction, InteractionOutcome], relay: OutboxRelay) -> None:
        self.store, self.inferences, self.relay = store, inferences, relay
        self.feedback = Kind("feedback", feedback_record, feedback, feedback_answer,
                             lambda body: metrics.FEEDBACK.labels(body.feedback, "rejected").inc())
        self.interactions = Kind("interaction", interaction_record, interactions, interaction_answer,
                                 lambda body: metrics.INTERACTIONS.labels(interaction_kind(body.dwell_s),
                                                                          "rejected").inc())

    @property
    def writers(self) -> tuple[ActionWriter, ActionWriter]:
        return self.feedback.writer, self.interactions.writer

    async def accept(self, kind: Kind, body: ActionRequest) -> FeedbackResponse | InteractionResponse:
        answer = (await self.accept_many(kind, [body]))[0]
        if isinstance(answer, FeedbackError):
            raise answer
        return answer

    async def accept_many(self, kind: Kind, bodies: list[ActionRequest]
                          ) -> list[FeedbackResponse | InteractionResponse | FeedbackError]:
        """Validates the items together (one lookup), then writes the valid ones in one transaction."""
        checked = await validate(bodies, self.inferences, self.store, kind.build)
        for body, result in zip(bodies, checked, strict=True):
            if isinstance(result, FeedbackError):
                kind.refused(body)
        valid = [f for f in checked if not isinstance(f, FeedbackError)]
        outcomes = await kind.writer.record_many(valid)
        if any(o.status != "duplicate" for o in outcomes):
            self.relay.wake.set()
        answers = iter(outcomes)
        return [c if isinstance(c, FeedbackError) else kind.answer(next(answers)) for c in checked]
