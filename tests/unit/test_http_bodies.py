"""What the services refuse before any route runs, and the echo of a refused input."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from shared.ml.training.hyperparameters import Hyperparameters
from shared.web.http import is_json, json_problem, printable


@pytest.mark.parametrize(("body", "says"), [
    (b'{"a": NaN}', "NaN is not a JSON value"),
    (b'[Infinity]', "Infinity is not a JSON value"),
    (b'{"a": -Infinity}', "-Infinity is not a JSON value"),
    (b'{"a": 1e400}', "the number 1e400 is beyond the largest a double holds"),
    (b'{"a": -2.5E+999}', "beyond the largest a double holds"),
    (b'[' + b'1' * 4301 + b']', "an integer of 4301 digits: at most 4300 digits are read"),
    (b'[' * 100_000 + b']' * 100_000, "nested too deeply"),
    (b'{"a": "\xff"}', "not UTF-8 text (byte 7"),
])
def test_json_that_python_reads_but_the_services_cannot_answer_is_named(body: bytes, says: str) -> None:
    assert says in (json_problem(body) or "")


@pytest.mark.parametrize("body", [b'{"a": 1.5e308, "b": -1e-400, "c": [1, 2.0, "NaN"]}', b'{"a": ',
                                  '{"a": "\u00e9"}'.encode("utf-16"), b'{"a": "\\ud800"}', b"null"])
def test_standard_json_and_syntax_errors_are_left_to_fastapi(body: bytes) -> None:
    assert json_problem(body) is None


def test_an_echo_is_always_strict_json() -> None:
    errors = [{"input": {"q": "\ud800", "n": float("nan"), "i": [float("inf"), -float("inf")]},
               "raw": b"\xff\xfeok", "ctx": {"error": ValueError("bad")}, "loc": ("body", 0)}]
    echoed = printable(errors)
    assert json.loads(json.dumps(echoed, allow_nan=False, ensure_ascii=False).encode("utf-8")) == [{
        "input": {"q": "\\ud800", "n": "NaN", "i": ["Infinity", "-Infinity"]},
        "raw": "\\xff\\xfeok", "ctx": {"error": "bad"}, "loc": ["body", 0]}]


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/json", True), ("application/json; charset=utf-8", True),
    ("application/merge-patch+json", True), ("text/plain", False), ("text/json", False),
    ("application/x-www-form-urlencoded", False), ("", False), (None, False)])
def test_which_bodies_are_json_follows_fastapi(content_type: str | None, expected: bool) -> None:
    assert is_json(content_type) is expected


def test_a_seed_numpy_cannot_take_is_refused_up_front() -> None:
    assert Hyperparameters(seed=2**32 - 1).seed == 2**32 - 1
    with pytest.raises(ValidationError, match="less than or equal to 4294967295"):
        Hyperparameters(seed=2**32)
