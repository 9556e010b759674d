"""The outbox relay: publishes feedback events the store has queued, then marks them published.

The feedback and its event are written in one store transaction, so an event is never lost:
if the broker is down, events wait in the store and go out when it is back. A crash between
publish and mark re-publishes; consumers de-duplicate on `event_id`. Events stay in the store
once published (`published_at` set): the aggregator reads them back to count any that a broker
lost before delivering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.errors import KafkaError as AsyncKafkaError
from kafka.errors import KafkaError

from shared import metrics
from shared.messaging.admin import ensure_topics
from shared.messaging.broker import BrokerOutage
from shared.messaging.producer import Producer
from shared.records import OutboxEntry, utcnow
from shared.settings import Settings
from shared.store import Store, StoreUnavailableError

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(self, store: Store, settings: Settings, batch: int = 500) -> None:
        self.store = store
        self.settings = settings
        self.batch = batch
        self.wake = asyncio.Event()
        self.connected = False
        self.producer = Producer(settings)
        self.outage = BrokerOutage(settings, "outbox-relay")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.producer.close()

    async def _send_all(self, entries: list[OutboxEntry]) -> None:
        if not self.producer.started:
            # A broker that restarted empty (memory storage) has no topics: create them again.
            topics = tuple(sorted({e.topic for e in entries}))
            await asyncio.to_thread(ensure_topics, self.settings, topics)
        await self.producer.send_batch([(e.topic, e.key.encode(), e.payload.encode()) for e in entries])

    async def publish_pending(self) -> int:
        entries = await self.store.pending_outbox(self.batch)
        if not entries:
            return 0
        await self._send_all(entries)
        await self.store.mark_published([e.event_id for e in entries])
        metrics.OUTBOX_PUBLISHED.inc(len(entries))
        return len(entries)

    async def _update_backlog(self) -> None:
        count, oldest = await self.store.outbox_backlog()
        metrics.OUTBOX_BACKLOG.set(count)
        metrics.OUTBOX_OLDEST_AGE.set((utcnow() - oldest).total_seconds() if oldest else 0)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                sent = await self.publish_pending()
                self.connected = True
                if sent:
                    self.outage.ok()
                delay = 0.2
                await self._update_backlog()
                if sent < self.batch:
                    self.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), timeout=1.0)
            except (AsyncKafkaError, KafkaError, OSError) as exc:
                self.connected = False
                metrics.PUBLISH_FAILURES.inc()
                self.outage.failed(f"{exc!r} (retry in {delay:.1f} s)")
                # The outbox alerts watch these gauges most while Kafka is down.
                with contextlib.suppress(StoreUnavailableError):
                    await self._update_backlog()
                await self.producer.close()  # the next round connects again
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except StoreUnavailableError as exc:
                log.warning("event=outbox_store_unavailable error=%s", exc)
                await asyncio.sleep(1.0)
