"""`Producer.send_batch` on the real broker: every message stored, each key on its usual partition,
in order."""

from __future__ import annotations

import asyncio
import time
import uuid

from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker
from shared.messaging.producer import Producer
from shared.settings import Settings


def test_each_key_lands_where_the_default_partitioner_puts_it_in_order(broker: EmbeddedBroker) -> None:
    settings = Settings(kafka_bootstrap=broker.bootstrap)
    topic = f"batches-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, (topic,), partitions=3)
    # Three times a batch's worth of bytes, so full batches are sent and new ones started.
    messages = [(topic, f"key-{n % 40}".encode(), f"{n:06d}".encode() + b"x" * 600) for n in range(3000)]

    async def send() -> None:
        producer = Producer(settings)
        try:
            await producer.send_batch(messages, timeout_s=30)
        finally:
            await producer.close()

    asyncio.run(send())
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        read: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(3)}
        deadline = time.monotonic() + 30
        while sum(map(len, read.values())) < len(messages) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                read[tp.partition] += [(r.key, r.value) for r in records]
    finally:
        consumer.close()
    assert sum(map(len, read.values())) == len(messages)
    def partition_of(key: bytes) -> int:  # kafka-python's (and Java's) default partitioner
        return (murmur2(key) & 0x7FFFFFFF) % 3

    for partition, records in read.items():
        assert records == [(key, value) for _, key, value in messages if partition_of(key) == partition]
    assert len([p for p, records in read.items() if records]) > 1
