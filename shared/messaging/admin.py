"""Topic administration: create EduRanker's topics, delete one, find partitions that cannot be read.

Synchronous by nature (a service calls it once at start, off its event loop), so on kafka-python's
admin client, configured like every other client (`shared.messaging.config`).
"""

from __future__ import annotations

import contextlib
import logging
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from shared.events import ALL_TOPICS
from shared.messaging.config import kafka_connection
from shared.messaging.deadletters import DEADLETTER_TOPIC
from shared.settings import Settings

log = logging.getLogger(__name__)


def ensure_topics(settings: Settings, topics: tuple[str, ...] = (*ALL_TOPICS, DEADLETTER_TOPIC),
                  partitions: int | None = None, config: dict[str, str] | None = None) -> None:
    """Create EduRanker's topics if missing (idempotent; production clusters may pre-create them)."""
    admin = KafkaAdminClient(**kafka_connection(settings).kafka_python())
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name=t, num_partitions=partitions or settings.kafka_topic_partitions,
                     replication_factor=1, topic_configs=config or {})
            for t in topics
            if t not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
            log.info("event=topics_created topics=%s", ",".join(t.name for t in missing))
    finally:
        admin.close()


def delete_topic(settings: Settings, topic: str) -> None:
    admin = KafkaAdminClient(**kafka_connection(settings).kafka_python())
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()


def unreadable_partitions(settings: Settings, topic: str, timeout_s: float | None = None) -> list[int]:
    """Partitions of `topic` that report records but return none when read from their start.

    A broker that lost a log's data but kept its offsets looks like this (the embedded broker,
    restarted empty under a running Faust worker, ends up so); a reader that waits for those
    records, like Faust's table recovery, waits forever.
    """
    consumer = KafkaConsumer(**kafka_connection(settings).kafka_python(), enable_auto_commit=False)
    try:
        if topic not in consumer.topics():  # also loads the metadata that partitions_for_topic reads
            return []
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        waiting = {tp for tp in tps if end[tp] > begin[tp]}
        if not waiting:
            return []
        consumer.assign(sorted(waiting))
        consumer.seek_to_beginning(*waiting)
        deadline = time.monotonic() + (settings.kafka_timeout_s if timeout_s is None else timeout_s)
        while waiting and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200, max_records=100).items():
                if records:
                    waiting.discard(tp)
                    consumer.pause(tp)  # one record proves it readable: read no further
        return sorted(tp.partition for tp in waiting)
    finally:
        consumer.close()
