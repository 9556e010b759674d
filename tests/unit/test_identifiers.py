"""One rule for every identifier the API accepts: 1 to 200 characters of printable text."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.collector.intake import FeedbackRequest
from services.reranker.routes.search import RerankDocument
from shared.records import ActionBase, Feedback, Interaction, Resource

# Every model a route or the catalogue loader builds from what a caller sends, with a valid value
# for each of its required fields; the identifier fields are found by name.
ACCEPTED: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (Resource, {"id": "res-1", "title": "Fractions"}),
    (FeedbackRequest, {"inference_id": "inf-1", "resource_id": "res-1", "feedback": "like"}),
    (RerankDocument, {"id": "doc-1", "text": "Fractions"}),
]
ID_FIELDS = [(model, valid, name) for model, valid in ACCEPTED for name in model.model_fields
             if name == "id" or name.endswith("_id")]
REFUSED = {
    "\x00": "U+0000 at position 3 is a control character",
    "\x1b": "U+001B at position 3 is a control character",  # a terminal escape
    "\n": "U+000A at position 3 is a control character",
    "\x7f": "U+007F at position 3 is a control character",
    "\x85": "U+0085 at position 3 is a control character",  # C1: NEXT LINE
    "\u2028": "U+2028 at position 3 is a line separator",
    "\u2029": "U+2029 at position 3 is a paragraph separator",
}


def test_every_identifier_field_is_found() -> None:
    assert {(model.__name__, name) for model, _, name in ID_FIELDS} == {
        ("Resource", "id"), ("RerankDocument", "id"),
        *{("FeedbackRequest", name) for name in ("inference_id", "resource_id", "user_id", "session_id",
                                                 "request_id")},
    }


@pytest.mark.parametrize(("model", "valid", "name"), ID_FIELDS,
                         ids=[f"{model.__name__}.{name}" for model, _, name in ID_FIELDS])
@pytest.mark.parametrize("char", list(REFUSED), ids=[f"U+{ord(c):04X}" for c in REFUSED])
def test_control_characters_are_refused_in_every_identifier(model: type[BaseModel], valid: dict[str, Any],
                                                            name: str, char: str) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate({**valid, name: f"abc{char}def"})
    (error,) = refused.value.errors()
    assert error["loc"] == (name,)
    assert error["msg"] == f"Value error, an id must be printable text: {REFUSED[char]}; remove it"


@pytest.mark.parametrize(("model", "valid", "name"), ID_FIELDS,
                         ids=[f"{model.__name__}.{name}" for model, _, name in ID_FIELDS])
def test_every_identifier_has_the_same_bounds(model: type[BaseModel], valid: dict[str, Any],
                                              name: str) -> None:
    for good in ("a", "x" * 200, "Cours d'algèbre n° 3", "数学-1", "🙂 emoji", "tab-free id with spaces"):
        assert getattr(model.model_validate({**valid, name: good}), name) == good
    for bad, says in (("", "at least 1 character"), ("x" * 201, "at most 200 characters")):
        with pytest.raises(ValidationError, match=says):
            model.model_validate({**valid, name: bad})


def test_records_and_events_share_the_rule() -> None:
    """What is stored and published is held to what was accepted."""
    valid = {"feedback_id": "f", "inference_id": "i", "resource_id": "r", "label": "like", "rank": 1,
             "model_version": "v0"}
    for name in ("inference_id", "resource_id", "user_id", "session_id", "request_id"):
        with pytest.raises(ValidationError, match=f"{name}\n  Value error, an id must be printable text"):
            Feedback(**{**valid, name: "id\x00"})
    assert all(issubclass(kind, ActionBase) for kind in (Feedback, Interaction, FeedbackRequest))
