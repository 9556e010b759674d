"""Collector HTTP API: feedback in (single and batch), statistics out."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from services.collector.outbox import OutboxRelay
from shared import metrics
from shared.events import new_id
from shared.store import Feedback, Store

router = APIRouter()

# The reranker writes inference records in the background; a click that follows a search
# within milliseconds may arrive first, so an unknown inference is looked up again briefly.
INFERENCE_GRACE_S = (0.05, 0.2, 0.5, 1.0)


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_relay(request: Request) -> OutboxRelay:
    return request.app.state.relay


StoreDep = Annotated[Store, Depends(get_store)]
RelayDep = Annotated[OutboxRelay, Depends(get_relay)]


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
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


async def accept(body: FeedbackRequest, store: Store, relay: OutboxRelay) -> FeedbackResponse:
    inference = await store.get_inference(body.inference_id)
    for delay in INFERENCE_GRACE_S:
        if inference is not None:
            break
        await asyncio.sleep(delay)
        inference = await store.get_inference(body.inference_id)
    if inference is None:
        metrics.FEEDBACK.labels(body.feedback, "rejected").inc()
        raise FeedbackError(404, f"inference {body.inference_id!r} not found: "
                                 "send the inference_id returned by a search")
    shown = inference.shown(body.resource_id)
    if shown is None:
        metrics.FEEDBACK.labels(body.feedback, "rejected").inc()
        raise FeedbackError(422, f"resource {body.resource_id!r} was not among the results "
                                 f"shown for inference {body.inference_id!r}")
    outcome = await store.record_feedback(Feedback(
        feedback_id=new_id(), inference_id=body.inference_id, resource_id=body.resource_id,
        label=body.feedback, rank=shown.rank, model_version=inference.model_version,
        user_id=body.user_id, session_id=body.session_id, request_id=body.request_id,
        is_test=body.is_test,
    ))
    metrics.FEEDBACK.labels(body.feedback, "duplicate" if outcome.status == "duplicate" else "accepted").inc()
    if outcome.status != "duplicate":
        relay.wake.set()
    return FeedbackResponse(feedback_id=outcome.feedback.feedback_id, status=outcome.status,
                            label=outcome.feedback.label, previous_label=outcome.previous_label)


@router.post("/api/feedback", response_model=FeedbackResponse, tags=["feedback"])
async def post_feedback(body: FeedbackRequest, store: StoreDep, relay: RelayDep) -> FeedbackResponse:
    """Stores a like/dislike on a shown result; the event reaches Kafka through the outbox."""
    try:
        return await accept(body, store, relay)
    except FeedbackError as exc:
        raise HTTPException(exc.status, exc.message) from None


class BatchItemResult(BaseModel):
    index: int
    ok: bool
    status_code: int
    result: FeedbackResponse | None = None
    error: str | None = None


class FeedbackBatch(BaseModel):
    items: list[FeedbackRequest] = Field(min_length=1, max_length=500)


@router.post("/api/feedback/batch", tags=["feedback"])
async def post_feedback_batch(body: FeedbackBatch, store: StoreDep, relay: RelayDep) -> dict:
    """Each item is accepted or refused on its own; one bad item does not block the others."""
    results = []
    for i, item in enumerate(body.items):
        try:
            results.append(BatchItemResult(index=i, ok=True, status_code=200,
                                           result=await accept(item, store, relay)))
        except FeedbackError as exc:
            results.append(BatchItemResult(index=i, ok=False, status_code=exc.status, error=exc.message))
    return {"accepted": sum(r.ok for r in results), "results": results}


@router.get("/api/feedback/stats", tags=["feedback"])
async def feedback_stats(store: StoreDep) -> dict:
    """The guide's "statistiques des inférences" and "distribution des feedbacks"."""
    feedback = await store.list_feedback(include_test=True)
    inferences = await store.count_inferences()
    runs = [r for r in await store.list_training_runs(limit=50) if r.status in ("promoted", "rejected")]
    last_training = max((r.finished_at for r in runs if r.finished_at), default=None)
    labels = Counter(f.label for f in feedback)
    by_version: dict[str, Counter] = {}
    for f in feedback:
        by_version.setdefault(f.model_version, Counter())[f.label] += 1
    since = [f for f in feedback if last_training is None or f.updated_at > last_training]
    total = len(feedback)
    return {
        "feedback": {
            "total": total,
            "like": labels["like"],
            "dislike": labels["dislike"],
            "like_ratio": labels["like"] / total if total else None,
            "test": sum(f.is_test for f in feedback),
            "by_model_version": {v: dict(c) for v, c in sorted(by_version.items())},
            "since_last_training": len(since),
            "last_training_at": last_training.isoformat() if last_training else None,
        },
        "inferences": {"total": sum(inferences.values()), "by_model_version": inferences},
    }
