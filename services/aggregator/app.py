"""Aggregator: a faust-streaming app that counts feedback and asks for training.

`create_app(settings)` declares the topics, the table, the agents, the timers and the pages in
one screen; what they do is `worker.Aggregator`'s.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.aggregator.table import OnePartitionTable, State
from services.aggregator.worker import Aggregator
from shared.events import (
    EXPERIMENT_DECIDED_TOPIC,
    FEEDBACK_TOPIC,
    INTERACTION_TOPIC,
    MODEL_READY_TOPIC,
    TRAINING_REQUESTED_TOPIC,
)
from shared.messaging.broker import BrokerOutage
from shared.messaging.config import kafka_connection
from shared.messaging.deadletters import DEADLETTER_TOPIC
from shared.settings import Settings

log = logging.getLogger(__name__)

TABLE = "aggregator-state"

# Faust fixes its consumer's fetch wait at 1.5 s. The embedded broker holds a fetch that found
# nothing for the whole wait instead of answering when data arrives, which added up to 1.5 s
# to every count; 100 ms costs an idle worker ten small requests a second.
FETCH_MAX_WAIT_MS = 100
PATCHED_FAUST = ("0.15.",)  # the faust-streaming versions whose consumer thread this was read against


def shorten_fetch_wait() -> bool:
    """Sets the worker consumer's fetch wait to `FETCH_MAX_WAIT_MS`, once, on a Faust we know.

    Faust offers no setting for it: the consumer it creates is wrapped to change the private
    attribute its `start()` reads. On another Faust version nothing is patched (counts then
    wait up to 1.5 s on the embedded broker) and a warning says so.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "short_fetch_wait", False):
        return True
    if not faust.__version__.startswith(PATCHED_FAUST):
        log.warning("event=fetch_wait_not_shortened faust=%s known=%s", faust.__version__, PATCHED_FAUST)
        return False

    def short_fetch_wait(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by start(), which comes later
        return consumer

    short_fetch_wait.short_fetch_wait = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = short_fetch_wait  # type: ignore[method-assign]
    return True


class StuckWatch:
    """Tells a Faust worker that stays rebalancing from one that is rebalancing.

    A rebalance takes seconds. One can also never end: after a broker restarted empty, the
    consumer's commit of an offset on a topic the new broker does not know is retried forever
    (aiokafka treats UnknownTopicOrPartition as retriable), and the worker neither counts nor
    lets the outbox check run. Restoring a table from its changelog (`recovering`) is not stuck:
    a long changelog takes as long as it takes.
    """

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self.since: float | None = None

    def stuck(self, rebalancing: bool, recovering: bool, broker_answers: bool, now: float) -> bool:
        """True once the worker has been rebalancing, not restoring, with the broker answering,
        for `after_s` in a row (0: never)."""
        if not (rebalancing and not recovering and broker_answers) or self.after_s <= 0:
            self.since = None
            return False
        self.since = now if self.since is None else self.since
        return now - self.since >= self.after_s


def restart_in_place() -> None:
    """Starts the aggregator again in this process (same pid, ports, environment): its start drops a
    changelog the broker cannot serve and rebuilds the counts from the store, whatever runs it."""
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "services.aggregator"])


def create_app(settings: Settings) -> faust.App:
    """The aggregator's Faust app; its `Aggregator` is `app.aggregator`."""
    shorten_fetch_wait()
    app = faust.App(
        "eduranker-aggregator",
        # Brokers, SASL/TLS and group timeouts: the same settings as every client.
        **kafka_connection(settings).faust(),
        store="memory://",
        topic_partitions=settings.kafka_topic_partitions,
        topic_replication_factor=1,
        web_host=settings.host,
        web_port=settings.aggregator_port,
        web_bind=settings.host,
        datadir=str(settings.faust_datadir),
        broker_commit_every=500,  # each commit flushes the changelog first: about one per batch
        broker_commit_interval=1.0,
        # A broker that restarted empty has a changelog shorter than what this worker already
        # wrote; the table in memory is still right (the outbox check counts what the broker
        # lost), so keep running instead of stopping on the mismatch.
        recovery_consistency_check=False,
    )
    raw = {"value_serializer": "raw", "key_serializer": "raw"}
    names = (FEEDBACK_TOPIC, INTERACTION_TOPIC, MODEL_READY_TOPIC, TRAINING_REQUESTED_TOPIC, DEADLETTER_TOPIC,
             EXPERIMENT_DECIDED_TOPIC)
    topics = {name: app.topic(name, **raw) for name in names}
    state = State(app.tables.add(OnePartitionTable(app, name=TABLE, default=None, partitions=1,
                                                   beacon=app.tables.beacon)))

    def settled() -> bool:
        """False while Faust rebalances or restores the table from its changelog."""
        return not (app.rebalancing or app.in_recovery) and app.tables.recovery.completed.is_set()

    async def publish(topic: str, key: bytes | None, value: bytes) -> None:
        await topics[topic].send(key=key, value=value)

    aggregator = Aggregator(settings, state, publish, settled)
    app.aggregator = aggregator  # type: ignore[attr-defined]
    outage = BrokerOutage(settings, "aggregator")  # aiokafka retries in silence (shared.logging)
    watch = StuckWatch(settings.aggregator_stuck_after_s)

    @app.on_before_shutdown.connect
    async def close_store(app: Any, **kwargs: Any) -> None:
        await aggregator.close()

    @app.agent(topics[FEEDBACK_TOPIC])
    async def count_feedback_events(stream: Any) -> None:
        # What arrived within the wait, up to the maximum, is counted together: one table commit.
        async for events in stream.take_events(settings.aggregator_batch_max,
                                               within=settings.aggregator_batch_wait_s):
            await aggregator.on_messages(FEEDBACK_TOPIC, [(e.value, e.message) for e in events])

    @app.agent(topics[INTERACTION_TOPIC])
    async def count_interaction_events(stream: Any) -> None:
        async for events in stream.take_events(settings.aggregator_batch_max,
                                               within=settings.aggregator_batch_wait_s):
            await aggregator.on_messages(INTERACTION_TOPIC, [(e.value, e.message) for e in events])

    @app.agent(topics[MODEL_READY_TOPIC])
    async def training_done(stream: Any) -> None:
        async for event in stream.events():
            await aggregator.on_messages(MODEL_READY_TOPIC, [(event.value, event.message)])

    @app.timer(interval=1.0)
    async def housekeeping() -> None:
        await aggregator.housekeeping()

    @app.timer(interval=outage.probe_every_s)
    async def watch_broker() -> None:
        await outage.acheck()
        if watch.stuck(bool(app.rebalancing), bool(app.in_recovery), outage.since is None, time.monotonic()):
            log.error("event=worker_stuck rebalancing_for_s=%.0f action=restart_in_place", watch.after_s)
            restart_in_place()

    @app.page("/stats")
    async def stats_view(web: Any, request: Any) -> Any:
        return web.json(aggregator.snapshot({"rebalancing": bool(app.rebalancing),
                                             "recovering": bool(app.in_recovery), "settled": settled()}))

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "service": "aggregator"})

    @app.page("/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        ready = aggregator.ready()
        return web.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app
