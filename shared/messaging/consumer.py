"""Reading events (aiokafka, on the service's event loop): the consumer loop and its two readers.

A group member (the trainer) is handed each event of its topics by the group and commits it after
the handler returns: at-least-once. A broadcast reader (each reranker replica) has no group and
reads every partition from where it started, so every replica sees every event. Messages that are
no event are set aside as dead letters (`shared.messaging.deadletters`); a broker that does not
answer is waited for quietly (`BrokerOutage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from shared.events import Event
from shared.messaging.broker import BrokerOutage
from shared.messaging.codec import decode_or_reason
from shared.messaging.config import KafkaConnection, kafka_connection
from shared.messaging.deadletters import DEADLETTER_TOPIC, set_aside
from shared.messaging.producer import Producer
from shared.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[Event], Awaitable[None]]

BROKER_ERRORS = (KafkaError, TimeoutError)
"""What a broker that is away or restarting raises: waited for, not logged as a failure."""


async def broadcast_consumer(connection: KafkaConnection, topics: tuple[str, ...]) -> AIOKafkaConsumer:
    """A started consumer with no group, at the current end of every partition of `topics`: it sees
    every event sent after this returns, whatever other readers do."""
    consumer = AIOKafkaConsumer(**connection.aiokafka(), enable_auto_commit=False)
    try:
        await consumer.start()  # loads every topic's metadata, which partitions_for_topic reads
        tps = [TopicPartition(topic, p) for topic in topics
               for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolve now, so events sent after this call are seen
    except BaseException:
        await close_consumer(consumer, connection.timeout_s)
        raise
    return consumer


async def group_consumer(connection: KafkaConnection, topics: tuple[str, ...],
                         group_id: str) -> AIOKafkaConsumer:
    """A started consumer-group member with manual commits, from the start of what the group has not
    committed; it joins the group at its first read."""
    consumer = AIOKafkaConsumer(*topics, **connection.aiokafka(), **connection.aiokafka_group(),
                                group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        await consumer.start()
    except BaseException:
        await close_consumer(consumer, connection.timeout_s)
        raise
    return consumer


async def close_consumer(consumer: AIOKafkaConsumer, timeout_s: float) -> None:
    """Stops a consumer without committing anything; a broker that is away does not hold it up."""
    with contextlib.suppress(KafkaError, OSError):
        await asyncio.wait_for(consumer.stop(), timeout_s)


class ConsumerLoop:
    """Reads `topics` on the running event loop, from `start()` until `stop()`, and awaits `handle`
    for each event.

    With a `group_id`, an event is committed once its handler returned: at-least-once. While a
    handler works (a training run), the partitions are paused and still polled, so the group
    membership stays alive. A handler that fails closes the consumer without a commit; it joins
    again after `retry_s` and the event is delivered again. Without a group (broadcast), a failed
    handler is logged and the next event handled. Unreadable messages are sent to the dead-letter
    topic with `producer`, the service's own.
    """

    def __init__(self, settings: Settings, topics: str | tuple[str, ...], handle: Handler, producer: Producer,
                 *, group_id: str | None = None, name: str = "consumer", max_records: int | None = None,
                 retry_s: float = 1.0) -> None:
        self.settings = settings
        self.connection = kafka_connection(settings)
        self.topics = (topics,) if isinstance(topics, str) else topics
        self.handle, self.producer = handle, producer
        self.group_id, self.name, self.max_records, self.retry_s = group_id, name, max_records, retry_s
        self.ready = asyncio.Event()  # a consumer is connected
        self.joined = asyncio.Event()  # partitions are assigned to it
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> ConsumerLoop:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        return self

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Lets the event in hand finish for up to `timeout_s`, then ends the loop; an event cut
        short is not committed (a group delivers it again)."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=timeout_s)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        outage = BrokerOutage(self.settings, self.name)
        consumer: AIOKafkaConsumer | None = None
        try:
            while not self._stopping.is_set():
                try:
                    if consumer is None:
                        if not await outage.areachable():
                            await self._pause(1.0)
                            continue
                        consumer = await self._connect()
                        self.ready.set()
                    batches = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
                    await outage.acheck()
                    if consumer.assignment():
                        self.joined.set()
                except BROKER_ERRORS as exc:
                    outage.failed(exc)
                    await self._pause(1.0)
                    continue
                except Exception:
                    log.exception("event=consumer_failed name=%s", self.name)
                    if consumer is not None:
                        await close_consumer(consumer, self.connection.timeout_s)
                        consumer = None
                    await self._pause(self.retry_s)
                    continue
                try:
                    for records in batches.values():
                        for record in records:
                            await self._take(consumer, record)
                except Exception as exc:
                    if isinstance(exc, BROKER_ERRORS):
                        outage.failed(exc)
                    else:
                        log.exception("event=consumer_handler_failed name=%s", self.name)
                    # Uncommitted: the group hands the event out again once a member joins.
                    await close_consumer(consumer, self.connection.timeout_s)
                    consumer = None
                    await self._pause(self.retry_s)
        finally:
            if consumer is not None:
                await close_consumer(consumer, self.connection.timeout_s)

    async def _connect(self) -> AIOKafkaConsumer:
        connect = (group_consumer(self.connection, self.topics, self.group_id) if self.group_id
                   else broadcast_consumer(self.connection, self.topics))
        return await asyncio.wait_for(connect, 3 * self.connection.timeout_s)

    async def _take(self, consumer: AIOKafkaConsumer, record: ConsumerRecord) -> None:
        """One message: handled or set aside, then committed (group); raises only for a group."""
        try:
            event = decode_or_reason(record.topic, record.value)
            if isinstance(event, str):
                letter = set_aside(record.topic, record.value, event, record.partition, record.offset)
                await self.producer.send(DEADLETTER_TOPIC, letter, key=record.key)
            elif self.group_id:
                await self._work_on(consumer, event)
            else:
                await self.handle(event)
        except Exception:
            if self.group_id:
                raise
            log.exception("event=consumer_handler_failed name=%s topic=%s offset=%s", self.name,
                          record.topic, record.offset)
            return
        if self.group_id:
            await consumer.commit({TopicPartition(record.topic, record.partition): record.offset + 1})

    async def _work_on(self, consumer: AIOKafkaConsumer, event: Event) -> None:
        """Awaits the handler while the paused consumer keeps polling: a member that stops polling
        for `max_poll_interval` leaves the group."""
        work = asyncio.ensure_future(self.handle(event))
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=1.0)
                with contextlib.suppress(*BROKER_ERRORS):  # the commit after the work tells
                    consumer.pause(*consumer.assignment())  # after a rebalance, new partitions too
                    for tp, records in (await consumer.getmany(timeout_ms=0)).items():
                        consumer.seek(tp, records[0].offset)  # read again once the work is done
        finally:
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            consumer.resume(*consumer.assignment())
        work.result()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
