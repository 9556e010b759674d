"""Dead letters: a message no consumer can use is set aside on one topic with where it was and why,
for a person to look at; never retried. The consumer loop and the aggregator's Faust agents both
set messages aside here, each sending the letter with its own producer."""

from __future__ import annotations

import base64
import json
import logging

from shared import metrics
from shared.records import utcnow

log = logging.getLogger(__name__)

DEADLETTER_TOPIC = "eduranker.deadletter.v1"


def dead_letter(topic: str, payload: bytes | None, reason: str, partition: int | None = None,
                offset: int | None = None) -> bytes:
    """The record sent to `DEADLETTER_TOPIC` for a message set aside: where, why, what."""
    record: dict[str, object] = {
        "topic": topic, "partition": partition, "offset": offset, "reason": reason,
        "occurred_at": utcnow().isoformat(),
    }
    try:
        record["payload"] = (payload or b"").decode()
    except UnicodeDecodeError:
        record["payload_base64"] = base64.b64encode(payload or b"").decode()
    return json.dumps(record).encode()


def set_aside(topic: str, payload: bytes | None, reason: str, partition: int | None = None,
              offset: int | None = None) -> bytes:
    """Counts and logs a message a consumer cannot use, and returns its dead letter to send."""
    metrics.DEADLETTER.labels(topic).inc()
    log.error("event=dead_letter topic=%s partition=%s offset=%s reason=%s", topic, partition, offset, reason)
    return dead_letter(topic, payload, reason, partition, offset)
