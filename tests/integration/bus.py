"""Kafka as a synchronous test sees it: events sent with the services' own producer, and a topic read
from its end like a reranker replica reads `model.ready` (kafka-python, configured by the same
`shared.messaging.config` as every client)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from shared.events import Event
from shared.messaging.codec import decode_or_reason
from shared.messaging.config import kafka_connection
from shared.messaging.producer import Producer
from shared.settings import Settings
from tools.localstack import wait_for


def send(settings: Settings, topic: str, *messages: Event | bytes, key: str | None = None) -> None:
    """Sends events (encoded) or raw bytes in order and waits for every ack."""

    async def go() -> None:
        producer = Producer(settings)
        try:
            for message in messages:
                if isinstance(message, Event):
                    await producer.publish(topic, message, key=key)
                else:
                    await producer.send(topic, message, key=key.encode() if key else None)
        finally:
            await producer.close()

    asyncio.run(go())


class TopicReader:
    """Every message sent to `topic` after this was made: no group, each partition from its end."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer = KafkaConsumer(**kafka_connection(settings).kafka_python(), enable_auto_commit=False)
        tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or {0})]
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        for tp in tps:
            self.consumer.position(tp)  # resolve now, so messages sent after this are read

    def poll(self) -> dict[int, bytes]:
        """The messages that arrived within half a second, by offset."""
        return {record.offset: record.value for records in self.consumer.poll(timeout_ms=500).values()
                for record in records}

    def events(self) -> list[Event | str]:
        """`poll()` decoded: an event, or why the message is none."""
        return [decode_or_reason(self.topic, value) for value in self.poll().values()]

    def wait(self, match: Callable[[Event], bool], timeout_s: float, what: str) -> Event:
        """The first event that `match` accepts, within `timeout_s`."""

        def found() -> Event | None:
            return next((e for e in self.events() if isinstance(e, Event) and match(e)), None)

        return wait_for(found, timeout_s, 0.0, what)

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
