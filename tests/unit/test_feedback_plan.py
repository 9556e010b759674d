"""A batch of feedback writes decided in memory: the same outcomes as writing the items one by one."""

from __future__ import annotations

from shared.events import FeedbackEvent
from shared.records import Feedback
from shared.store.action_plan import plan_feedback
from shared.vocab import Label


def feedback(n: int, resource: str = "res-1", label: Label = "like",
             request_id: str | None = None) -> Feedback:
    return Feedback(feedback_id=f"fb-{n}", inference_id="inf-1", resource_id=resource, label=label, rank=1,
                    model_version="v0", user_id="ana", request_id=request_id)


def test_later_items_see_what_earlier_ones_of_the_batch_wrote() -> None:
    items = [feedback(0, request_id="r0"), feedback(1, label="dislike", request_id="r1"),
             feedback(2, request_id="r0"), feedback(3, label="dislike"), feedback(4, resource="res-2")]
    plan = plan_feedback(items, {}, {})
    answers = [(o.status, o.feedback.feedback_id, o.feedback.label, o.previous_label) for o in plan.outcomes]
    assert answers == [
        ("created", "fb-0", "like", None),
        ("updated", "fb-0", "dislike", "like"),
        ("duplicate", "fb-0", "dislike", None),  # a late retry of r0 does not flip the label back
        ("duplicate", "fb-0", "dislike", None),
        ("created", "fb-4", "like", None),
    ]
    # One row per result, in its final state; every request id it absorbed; one event per change.
    assert {k: (f.label, f.request_id) for k, f in plan.created.items()} == {
        "fb-0": ("dislike", "r1"), "fb-4": ("like", None)}
    assert plan.changed == {}
    assert plan.requests == [("r0", "fb-0"), ("r1", "fb-0")]
    events = [FeedbackEvent.model_validate_json(e.payload) for e in plan.events]
    assert [(e.feedback_id, e.label, e.previous_label) for e in events] == [
        ("fb-0", "like", None), ("fb-0", "dislike", "like"), ("fb-4", "like", None)]


def test_stored_rows_are_changed_not_created_and_known_request_ids_are_no_ops() -> None:
    stored = feedback(9, request_id="old")
    plan = plan_feedback([feedback(1, label="dislike"), feedback(2, request_id="old"),
                          feedback(3, label="dislike", request_id="again")],
                         {"old": stored}, {stored.identity: stored})
    assert [(o.status, o.feedback.feedback_id, o.feedback.label) for o in plan.outcomes] == [
        ("updated", "fb-9", "dislike"), ("duplicate", "fb-9", "dislike"), ("duplicate", "fb-9", "dislike")]
    assert plan.created == {} and list(plan.changed) == ["fb-9"]
    assert plan.changed["fb-9"].request_id == "old"  # the label changed without a request id: kept
    assert plan.requests == [("again", "fb-9")]  # same label again, with a new request id: absorbed
    assert len(plan.events) == 1
