"""Waiting for a broker: quiet while it starts, one error with what to do once it stays away.

Real Kafka clients (kafka-python's admin, the services' aiokafka consumer) against a loopback port
where nothing listens yet, then the real embedded broker started on that port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from shared.events import MODEL_READY_TOPIC, Event
from shared.logging import QuietConnectionRetries
from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker, broker_answers, free_port
from shared.messaging.consumer import ConsumerLoop
from shared.messaging.producer import Producer
from shared.settings import Settings
from tests.conftest import ROOT
from tools.localstack import wait_for

CLIENT = """
import sys
from shared.logging import configure
configure("early-client")
from shared.messaging.admin import ensure_topics
from shared.settings import Settings
ensure_topics(Settings(kafka_bootstrap=sys.argv[1]))
print("topics ready", flush=True)
"""


def test_a_client_started_before_the_broker_waits_without_an_error_line() -> None:
    """What every service and the launcher do: `shared.logging.configure`, then a Kafka client."""
    port = free_port()
    env = {**os.environ, "EDURANKER_LOG_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-c", CLIENT, f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        # At debug the demoted lines are still there: proof that the client did try and fail.
        wait_for(lambda: any("ECONNREFUSED" in line for line in list(lines)), 60, 0.05,
                 "the client's first refused connection")
        with EmbeddedBroker(port=port):
            assert process.wait(timeout=120) == 0, "".join(lines)
        reader.join(10)
    finally:
        process.kill()
    output = "".join(lines)
    assert "topics ready" in output
    refused = [line for line in lines if "ECONNREFUSED" in line]
    assert refused and all("level=DEBUG" in line for line in refused), output
    assert not [line for line in lines if "level=ERROR" in line or "level=WARNING" in line], output


def test_the_launchers_probe_is_quick_and_silent_while_nothing_listens(
        caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        assert broker_answers(f"127.0.0.1:{free_port()}", timeout_s=1.0) is False
    assert time.monotonic() - started < 5, "a Kafka client built while nothing listens blocks for 30 s"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """`wait_for` for a test on the event loop the consumer runs on: it waits without blocking it."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_consumer_whose_broker_stays_away_says_so_once_then_resumes(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{port}", kafka_unreachable_after_s=1.0)

    async def ignore(event: Event) -> None:
        return None

    producer = Producer(settings)
    loop = ConsumerLoop(settings, MODEL_READY_TOPIC, ignore, producer, name="test-model-ready")

    def messages(event: str, level: int) -> list[str]:
        return [r.getMessage() for r in list(caplog.records)
                if r.levelno == level and event in r.getMessage()]

    with caplog.at_level(logging.DEBUG, logger="shared.messaging.broker"):
        loop.start()
        try:
            await until(lambda: messages("event=broker_unreachable", logging.ERROR), 30, "the outage error")
            waits = len(messages("event=broker_wait", logging.DEBUG))
            await until(lambda: len(messages("event=broker_wait", logging.DEBUG)) >= waits + 3, 30,
                        "three more attempts")
            errors = messages("event=broker_unreachable", logging.ERROR)
            assert len(errors) == 1 and "what=test-model-ready" in errors[0]
            assert "EDURANKER_KAFKA_BOOTSTRAP" in errors[0]
            with EmbeddedBroker(port=port):
                await asyncio.to_thread(ensure_topics, settings, (MODEL_READY_TOPIC,))
                await until(loop.ready.is_set, 60, "the consumer once the broker answers")
                await until(lambda: messages("event=broker_reachable_again", logging.WARNING), 30,
                            "the all-clear")
                await loop.stop()
        finally:
            await loop.stop()
            await producer.close()
    quiet = QuietConnectionRetries()  # what every service's logging (shared.logging.configure) applies
    loud = [r for r in caplog.records if r.name.startswith(("kafka", "aiokafka")) and quiet.filter(r)
            and r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
