"""Collector HTTP API: feedback and interactions in (single and batch), statistics out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from services.collector.intake import (
    FeedbackError,
    FeedbackRequest,
    FeedbackResponse,
    Intake,
    InteractionRequest,
    InteractionResponse,
)
from services.collector.outbox import OutboxRelay
from shared.feedback_counts import count_feedback, describe, describe_interactions, last_training
from shared.online.credit import rated, recount
from shared.online.decision import describe as describe_experiment
from shared.records import utcnow
from shared.web.auth import require_feedback
from shared.web.deps import StoreDep
from shared.web.http import RequestBody

router = APIRouter()
MAX_BATCH = 500


async def get_intake(request: Request) -> Intake:
    return request.app.state.intake


async def get_relay(request: Request) -> OutboxRelay:
    return request.app.state.relay


IntakeDep = Annotated[Intake, Depends(get_intake)]
RelayDep = Annotated[OutboxRelay, Depends(get_relay)]


@router.post("/api/feedback", response_model=FeedbackResponse, tags=["feedback"],
             dependencies=[Depends(require_feedback)])
async def post_feedback(body: FeedbackRequest, intake: IntakeDep) -> FeedbackResponse:
    """Stores a like/dislike on a shown result; the event reaches Kafka through the outbox.

    `status` is "created", "updated" (the label changed; `previous_label` says from what) or
    "duplicate" (nothing changed: same label again, or a request id already seen).
    """
    try:
        return await intake.accept(intake.feedback, body)
    except FeedbackError as exc:
        raise HTTPException(exc.status, exc.message) from None


class BatchItemResult(BaseModel):
    index: int
    ok: bool
    status_code: int
    result: FeedbackResponse | InteractionResponse | None = None
    error: str | None = None


class FeedbackBatch(RequestBody):
    items: list[FeedbackRequest] = Field(min_length=1, max_length=MAX_BATCH)


class InteractionBatch(RequestBody):
    items: list[InteractionRequest] = Field(min_length=1, max_length=MAX_BATCH)


def batch_answer(answers: list[Any]) -> dict[str, Any]:
    results = [
        BatchItemResult(index=i, ok=False, status_code=r.status, error=r.message)
        if isinstance(r, FeedbackError) else BatchItemResult(index=i, ok=True, status_code=200, result=r)
        for i, r in enumerate(answers)
    ]
    return {"accepted": sum(r.ok for r in results), "results": results}


@router.post("/api/feedback/batch", tags=["feedback"], dependencies=[Depends(require_feedback)])
async def post_feedback_batch(body: FeedbackBatch, intake: IntakeDep) -> dict[str, Any]:
    """Up to 500 items, each validated on its own: a refused one says which (`index`) and why, and
    does not stop the others. The accepted ones are written in one transaction, in order (items
    about one result apply in order): a store failure answers 503 with none of them stored, and
    sending the same batch again is then safe (a feedback already stored answers "duplicate").
    """
    return batch_answer(await intake.accept_many(intake.feedback, body.items))


@router.post("/api/interactions", response_model=InteractionResponse, tags=["interactions"],
             dependencies=[Depends(require_feedback)])
async def post_interaction(body: InteractionRequest, intake: IntakeDep) -> InteractionResponse:
    """Records that a person opened a shown result, or (same ids, with `dwell_s`) how long they
    stayed before coming back to the list. Validated like feedback: an unknown inference is a 404,
    a resource that was not shown a 422.

    `status` is "created" (the open), "updated" (its dwell, or a longer one) or "duplicate"
    (nothing new: the open again, a shorter dwell, a request id already seen). One record per
    (inference, resource, person): a person who opens a result twice is one open.
    """
    try:
        return await intake.accept(intake.interactions, body)
    except FeedbackError as exc:
        raise HTTPException(exc.status, exc.message) from None


@router.post("/api/interactions/batch", tags=["interactions"], dependencies=[Depends(require_feedback)])
async def post_interaction_batch(body: InteractionBatch, intake: IntakeDep) -> dict[str, Any]:
    """Up to 500 interactions (a client's log of opens and returns), answered as the feedback batch
    is: each item validated on its own, the accepted ones written in one transaction, in order."""
    return batch_answer(await intake.accept_many(intake.interactions, body.items))


@router.get("/api/feedback/stats", tags=["feedback"])
async def feedback_stats(store: StoreDep, relay: RelayDep) -> dict[str, Any]:
    """The guide's "statistiques des inférences" and "distribution des feedbacks".

    `feedback` has the same keys as the aggregator's `/stats` `feedback`, read from the store.
    """
    feedback = await store.list_feedback(include_test=True)
    interactions = await store.list_interactions(include_test=True)
    inferences = await store.count_inferences()
    since, finished = last_training(await store.list_training_runs(limit=50))
    counts, versions, _ = count_feedback(feedback, since, interactions)
    pending, oldest = await store.outbox_backlog()
    experiment = await store.running_experiment()
    online = None
    if experiment is not None:
        tally, _ = recount(rated(await store.experiment_feedback(experiment.experiment_id),
                                 await store.experiment_interactions(experiment.experiment_id)))
        online = describe_experiment(experiment, tally,
                                     await store.count_impressions(experiment.experiment_id), utcnow())
    return {
        "experiment": online,
        "feedback": {**describe(counts, versions, finished), "test": sum(f.is_test for f in feedback)},
        "interactions": {**describe_interactions(counts), "test": sum(i.is_test for i in interactions)},
        "inferences": {"total": sum(inferences.values()), "by_model_version": inferences},
        "outbox": {"pending": pending, "oldest_pending_at": oldest.isoformat() if oldest else None,
                   "broker_connected": relay.connected},
    }
