"""Kafka wiring shared by every service: topics, producer, consumers, event (de)serialization."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import ValidationError

from shared import metrics
from shared.broker import BrokerOutage
from shared.events import ALL_TOPICS, TOPIC_EVENTS, Event, decode, encode, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)

DEADLETTER_TOPIC = "eduranker.deadletter.v1"
"""Messages a consumer could not use, with the reason; kept for a person to look at, never retried."""

# Short group timeouts: the embedded broker holds a group's first join for the whole
# rebalance timeout (`max_poll_interval_ms`), so long defaults mean 20 s+ start-ups.
GROUP_TIMEOUTS = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 10000,
}


SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
SSL_PROTOCOLS = ("SSL", "SASL_SSL")


def security_config(settings: Settings) -> dict[str, object]:
    """kafka-python's security options from the settings (PLAINTEXT, SSL, SASL PLAIN or SCRAM)."""
    protocol = settings.kafka_security_protocol
    config: dict[str, object] = {"security_protocol": protocol}
    if protocol in SASL_PROTOCOLS:
        if not settings.kafka_sasl_username:
            raise ValueError(f"EDURANKER_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                             "EDURANKER_KAFKA_SASL_USERNAME and EDURANKER_KAFKA_SASL_PASSWORD")
        config |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    if protocol in SSL_PROTOCOLS:
        config |= {
            "ssl_check_hostname": settings.kafka_ssl_check_hostname,
            "ssl_cafile": str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            "ssl_certfile": str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            "ssl_keyfile": str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        }
    return config


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context for clients that take one (Faust's aiokafka): CA, client certificate, hostname."""
    cafile = settings.kafka_ssl_cafile
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if settings.kafka_ssl_certfile:
        keyfile = settings.kafka_ssl_keyfile
        context.load_cert_chain(str(settings.kafka_ssl_certfile), str(keyfile) if keyfile else None)
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def faust_credentials(settings: Settings) -> object | None:
    """The same security settings as Faust's `broker_credentials` (None: plaintext)."""
    from faust.auth import SASLCredentials, SSLCredentials

    protocol = settings.kafka_security_protocol
    if protocol == "SSL":
        return SSLCredentials(ssl_context(settings))
    if protocol in SASL_PROTOCOLS:
        security_config(settings)  # the same checks as the other clients
        return SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context(settings) if protocol == "SASL_SSL" else None,
        )
    return None


def _common(settings: Settings) -> dict[str, object]:
    return {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "request_timeout_ms": int(settings.kafka_timeout_s * 1000),
        **security_config(settings),
    }


def ensure_topics(settings: Settings, topics: tuple[str, ...] = (*ALL_TOPICS, DEADLETTER_TOPIC),
                  partitions: int | None = None, config: dict[str, str] | None = None) -> None:
    """Create EduRanker's topics if missing (idempotent; production clusters may pre-create them)."""
    admin = KafkaAdminClient(**_common(settings))
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


def make_producer(settings: Settings) -> KafkaProducer:
    """acks=all with retries: a send either lands or raises.

    No broker-side idempotence: consumers de-duplicate on `event_id` already, and a broker that
    restarts empty (the embedded one) forgets producer ids, which kept a long-lived producer
    failing with UnknownProducerIdError instead of sending.
    """
    return KafkaProducer(
        **_common(settings),
        acks="all",
        enable_idempotence=False,
        retries=5,
        retry_backoff_ms=200,
        linger_ms=5,
        max_block_ms=int(settings.kafka_timeout_s * 1000),
    )


def async_security_config(settings: Settings) -> dict[str, object]:
    """aiokafka's security options from the same settings as `security_config`."""
    protocol = settings.kafka_security_protocol
    config: dict[str, object] = {"security_protocol": protocol}
    if protocol in SASL_PROTOCOLS:
        security_config(settings)  # the same checks as the other clients
        config |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    if protocol in SSL_PROTOCOLS:
        config["ssl_context"] = ssl_context(settings)
    return config


BATCH_BYTES = 512 * 1024
"""Bytes per record batch: about a thousand feedback events, under Kafka's 1 MB request limit."""


def make_batch_producer(settings: Settings) -> AIOKafkaProducer:
    """For many messages at once (`publish_batch`): acks=all, record batches built by aiokafka's C
    code. kafka-python spends about 35 µs of CPU per message, this about 3 (docs/feedback.md).
    No broker-side idempotence, for the reason `make_producer` gives. Started (`await start()`)
    and stopped inside the event loop that uses it."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        request_timeout_ms=int(settings.kafka_timeout_s * 1000),
        acks="all",
        enable_idempotence=False,
        retry_backoff_ms=200,
        max_batch_size=BATCH_BYTES,
        **async_security_config(settings),  # type: ignore[arg-type]
    )


async def publish_batch(producer: AIOKafkaProducer, messages: list[tuple[str, bytes, bytes]],
                        timeout_s: float) -> None:
    """Sends (topic, key, value) messages and waits for every ack; raises if any is not stored.

    One record batch per partition, and each key on the partition kafka-python's (and Java's)
    default partitioner gives it, so the events of one key stay in order whichever client sent them.
    """
    partitioner = DefaultPartitioner()
    partitions = {topic: sorted(await producer.partitions_for(topic)) for topic in {m[0] for m in messages}}
    open_batches: dict[tuple[str, int], Any] = {}
    sent: list[asyncio.Future[Any]] = []
    for topic, key, value in messages:
        target = (topic, partitioner(key, partitions[topic], partitions[topic]))
        batch = open_batches.get(target)
        if batch is not None and batch.append(key=key, value=value, timestamp=None) is not None:
            continue
        if batch is not None:  # full: send it, start the next
            sent.append(await producer.send_batch(batch, topic, partition=target[1]))
        batch = open_batches[target] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            raise ValueError(f"a message of {len(value)} bytes does not fit in a record batch")
    for (topic, partition), batch in open_batches.items():
        sent.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.wait_for(asyncio.gather(*sent), timeout_s)


def publish(producer: KafkaProducer, topic: str, event: Event, key: str | None = None,
            timeout_s: float = 10.0) -> None:
    """Send and wait for the broker's ack, so callers know the event is stored."""
    producer.send(topic, value=encode(event), key=key.encode() if key else None).get(timeout=timeout_s)


def make_group_consumer(settings: Settings, topic: str | tuple[str, ...], group_id: str) -> KafkaConsumer:
    """A consumer-group member with manual commits: commit only after the work is durable."""
    return KafkaConsumer(
        *((topic,) if isinstance(topic, str) else topic),
        **_common(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP_TIMEOUTS,
    )


def make_broadcast_consumer(settings: Settings, topic: str) -> KafkaConsumer:
    """Reads every partition from the end, with no group: each replica sees every event."""
    consumer = KafkaConsumer(**_common(settings), enable_auto_commit=False)
    partitions = consumer.partitions_for_topic(topic) or {0}
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)  # resolve now, so events sent after this call are seen
    return consumer


def unreadable_partitions(settings: Settings, topic: str, timeout_s: float | None = None) -> list[int]:
    """Partitions of `topic` that report records but return none when read from their start.

    A broker that lost a log's data but kept its offsets looks like this (the embedded broker,
    restarted empty under a running Faust worker, ends up so); a reader that waits for those
    records, like Faust's table recovery, waits forever.
    """
    consumer = KafkaConsumer(**_common(settings), enable_auto_commit=False)
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


def delete_topic(settings: Settings, topic: str) -> None:
    admin = KafkaAdminClient(**_common(settings))
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()


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


def parse(topic: str, payload: bytes) -> Event | None:
    """Decode a message; malformed ones are logged and skipped rather than crashing a consumer."""
    event = decode_or_reason(topic, payload)
    if isinstance(event, str):
        log.error("event=bad_message topic=%s error=%s", topic, event)
        return None
    return event


def dead_letter(topic: str, payload: bytes | None, reason: str, partition: int | None = None,
                offset: int | None = None) -> bytes:
    """The record sent to `DEADLETTER_TOPIC` for a message a consumer set aside: where, why, what."""
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
    """Counts and logs a message a consumer cannot use, and returns its dead letter for the caller
    to send with its own producer (kafka-python's here, Faust's in the aggregator)."""
    metrics.DEADLETTER.labels(topic).inc()
    log.error("event=dead_letter topic=%s partition=%s offset=%s reason=%s", topic, partition, offset, reason)
    return dead_letter(topic, payload, reason, partition, offset)


class DeadLetters:
    """Sets aside messages a kafka-python consumer cannot use: a log line, a metric, a dead letter."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: KafkaProducer | None = None

    def send(self, record: ConsumerRecord, reason: str) -> None:
        """Raises `KafkaError` when the dead letter cannot be stored, so the caller does not commit."""
        letter = set_aside(record.topic, record.value, reason, record.partition, record.offset)
        if self._producer is None:
            self._producer = make_producer(self.settings)
        self._producer.send(DEADLETTER_TOPIC, key=record.key, value=letter).get(
            timeout=self.settings.kafka_timeout_s)

    def decode(self, record: ConsumerRecord) -> Event | None:
        """The record's event; a malformed one is dead-lettered and None returned."""
        event = decode_or_reason(record.topic, record.value)
        if isinstance(event, str):
            self.send(record, event)
            return None
        return event

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(5)
            self._producer = None


@dataclass
class ConsumerLoop:
    """Runs a blocking kafka-python consumer in a daemon thread until `stop()`.

    `handle` is called for each decoded event; offsets are committed after it returns
    (for group consumers), which gives at-least-once delivery. A handler that hands its work to
    an event loop returns the work's future: the partitions are paused and polled until it is
    done, so long work (a training run) keeps the group membership alive. When a handler fails,
    a group consumer is closed without committing, so the event is delivered again after
    `retry_s`; a consumer without a group goes on with the next one. Malformed messages go to
    `dead_letters` when given (otherwise they are logged and skipped). A broker that does not
    answer is waited for quietly (`BrokerOutage`).
    """

    consumer_factory: Callable[[], KafkaConsumer]
    topic: str
    handle: Callable[[Event], Future[Any] | None]
    settings: Settings
    name: str = "consumer"
    dead_letters: DeadLetters | None = None
    max_records: int | None = None
    retry_s: float = 1.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.ready = threading.Event()  # a consumer is connected
        self.joined = threading.Event()  # partitions are assigned to it

    def start(self) -> ConsumerLoop:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        outage = BrokerOutage(self.settings, self.name)
        while not self._stop.is_set():
            try:
                if consumer is None:
                    if not outage.reachable():
                        self._stop.wait(1.0)
                        continue
                    consumer = self.consumer_factory()
                    self.ready.set()
                batches = consumer.poll(timeout_ms=500, max_records=self.max_records)
                outage.check()
                if consumer.assignment():
                    self.joined.set()
                for records in batches.values():
                    for record in records:
                        event = (self.dead_letters.decode(record) if self.dead_letters
                                 else parse(self.topic, record.value))
                        if event is not None:
                            self._handle(consumer, event)
                if batches and consumer.config.get("group_id"):
                    consumer.commit()
            except KafkaError as exc:
                outage.failed(exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("event=consumer_handler_failed name=%s", self.name)
                if consumer is not None and consumer.config.get("group_id"):
                    # Uncommitted: the group hands the event out again once a member joins.
                    with contextlib.suppress(Exception):
                        consumer.close(autocommit=False)
                    consumer = None
                self._stop.wait(self.retry_s)
        if consumer is not None:
            consumer.close()
        if self.dead_letters is not None:
            self.dead_letters.close()

    def _handle(self, consumer: KafkaConsumer, event: Event) -> None:
        work = self.handle(event)
        if work is None:
            return
        assigned = list(consumer.assignment())
        consumer.pause(*assigned)
        while not work.done():
            consumer.poll(timeout_ms=200)  # keeps the group membership alive
        consumer.resume(*assigned)
        work.result()
