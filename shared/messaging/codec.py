"""Events on the wire: one encoding (the event model's JSON) and one decoding, for every producer and
consumer, the aggregator's Faust agents and the outbox included."""

from __future__ import annotations

from pydantic import ValidationError

from shared.events import TOPIC_EVENTS, Event


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode(topic: str, payload: bytes) -> Event:
    """Raises `pydantic.ValidationError` for messages that do not match the topic's schema."""
    return TOPIC_EVENTS[topic].model_validate_json(payload)


def decode_or_reason(topic: str, payload: bytes | None) -> Event | str:
    """The message's event, or why it is not one (a line a person can act on)."""
    if not payload:
        return "empty message"
    if topic not in TOPIC_EVENTS:
        return f"no event schema for topic {topic!r}"
    try:
        return decode(topic, payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        return f"{where}: {first['msg']} ({exc.error_count()} error(s) for {exc.title})"
    except ValueError as exc:
        return str(exc).splitlines()[0]
