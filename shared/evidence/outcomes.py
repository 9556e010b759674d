"""What one person's action on one shown result is worth, and whose voice it is.

An *open* (a shown result clicked) ends in one of four ways, read from how long the person stayed
before coming back to the list (its dwell):

- `satisfied`: 30 s or more. Thirty seconds is the threshold of the "satisfied click" in the
  studies that tied dwell to explicit satisfaction (Fox et al. 2005, "Evaluating implicit measures
  to improve web search"; Kim et al. 2014, "Modeling dwell time to predict click-level
  satisfaction", who use it as the baseline to beat);
- `quick`: under 10 s, a quick return ("pogo-sticking"): the result looked right and was not;
- `neutral`: in between;
- `unknown`: no return reported (yet): a client that opens and never says how long counts little.

A like or a dislike says more than any open: its value is a whole vote, an open's a part of one.
The values are the credit an action gives the side that placed it in an interleaved list, and a
person's vote on a (query, resource) (`judgments.py`); `bench/studies/evidence.py` measured
them (docs/evidence.md).

A *voice* is who acted: the user id when the client gives one, else the session id. Each voice
counts once per (query, resource) in the memory and the training pairs, and once per query in an
online experiment, however often it repeats itself. A search with neither id is a voice of its
own (as the original guide's feedback, which names no one, has always counted), and anonymous
voices together weigh at most ANONYMOUS_VOICES identified ones on any (query, resource)
(`judgments.py`): clients that can say who acts should (the search page sends its session id).
"""

from __future__ import annotations

from typing import Literal

OpenOutcome = Literal["satisfied", "neutral", "quick", "unknown"]

SATISFIED_DWELL_S = 30.0
QUICK_RETURN_S = 10.0

RATING_VALUE: dict[str, float] = {"like": 1.0, "dislike": -1.0}
OPEN_VALUE: dict[OpenOutcome, float] = {"satisfied": 0.5, "neutral": 0.1, "quick": -0.5, "unknown": 0.1}

ANONYMOUS = "anon:"
ANONYMOUS_VOICES = 5


def open_outcome(dwell_s: float | None) -> OpenOutcome:
    """How an open ended, from the seconds until the person came back (None: not reported)."""
    if dwell_s is None:
        return "unknown"
    if dwell_s >= SATISFIED_DWELL_S:
        return "satisfied"
    if dwell_s < QUICK_RETURN_S:
        return "quick"
    return "neutral"


def rating_value(label: str | None) -> float:
    return 0.0 if label is None else RATING_VALUE[label]


def open_value(dwell_s: float | None) -> float:
    """An open's worth, from how it ended."""
    return OPEN_VALUE[open_outcome(dwell_s)]


def voice(user_id: str | None, session_id: str | None, inference_id: str) -> str:
    """Whose action it is: a person, else a session, else the anonymous search itself."""
    if user_id:
        return f"u:{user_id}"
    if session_id:
        return f"s:{session_id}"
    return f"{ANONYMOUS}{inference_id}"


def anonymous(voice_id: str) -> bool:
    return voice_id.startswith(ANONYMOUS)
