"""A broker that is still starting is waited for in silence; one that stays away is one error."""

from __future__ import annotations

import logging

import pytest

from shared.logging import QuietConnectionRetries
from shared.messaging.broker import BROKER_ADVICE, BrokerOutage
from shared.settings import Settings

# What kafka-python 3 and aiokafka log for every attempt while nothing listens on the port.
CLIENT_LINES = [
    ("kafka.net.manager", logging.ERROR, "Connection failed: KafkaConnectionError: 111 ECONNREFUSED"),
    ("kafka.net.connection", logging.ERROR,
     "<KafkaConnection node_id=bootstrap-0>: Connection lost: KafkaConnectionError: 111 ECONNREFUSED"),
    ("kafka.net.manager", logging.WARNING,
     "Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: 111 ECONNREFUSED (backoff 0.1 s)"),
    ("kafka.net.manager", logging.WARNING, "Bootstrap bootstrap-0 not ready; waiting 0.47 secs"),
    ("kafka.net.manager", logging.ERROR, "Bootstrap failed: KafkaTimeoutError: Unable to bootstrap from x"),
    ("aiokafka", logging.ERROR, 'Unable connect to "127.0.0.1:9092": [Errno 111] Connect call failed'),
    ("aiokafka", logging.ERROR, "Unable connect to node with id 1: [Errno 111] Connect call failed"),
    ("kafka.cluster", logging.ERROR, "Metadata refresh: failed Cancelled"),  # the client's own close
]


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.mark.parametrize(("name", "level", "message"), CLIENT_LINES)
def test_the_clients_connection_retries_are_kept_to_debug(name: str, level: int, message: str) -> None:
    line = record(name, level, message)
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        assert QuietConnectionRetries().filter(line) is False
        root.setLevel(logging.DEBUG)  # EDURANKER_LOG_LEVEL=DEBUG still shows them, as debug
        assert QuietConnectionRetries().filter(line) is True and line.levelname == "DEBUG"
    finally:
        root.setLevel(before)


def test_other_client_errors_still_reach_the_log() -> None:
    line = record("kafka.net.connection", logging.ERROR, "SaslHandshake failed: UnsupportedSaslMechanism")
    assert QuietConnectionRetries().filter(line) is True and line.levelno == logging.ERROR


def test_a_broker_away_for_less_than_the_grace_is_waited_for_quietly(
        caplog: pytest.LogCaptureFixture) -> None:
    outage = BrokerOutage(Settings(kafka_unreachable_after_s=3600), "test-consumer")
    with caplog.at_level(logging.DEBUG, logger="shared.messaging.broker"):
        for _ in range(5):
            outage.failed("KafkaConnectionError: 111 ECONNREFUSED")
        outage.ok()
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] * 5


def test_a_broker_that_stays_away_is_one_error_that_says_what_to_do(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(kafka_unreachable_after_s=0, kafka_bootstrap="127.0.0.1:1")
    outage = BrokerOutage(settings, "test-consumer")
    with caplog.at_level(logging.DEBUG, logger="shared.messaging.broker"):
        for _ in range(4):
            outage.failed("KafkaConnectionError: 111 ECONNREFUSED")
        outage.ok()
        outage.failed("again")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, "one error per outage, not one per attempt"
    assert "event=broker_unreachable what=test-consumer bootstrap=127.0.0.1:1" in errors[0]
    assert repr(BROKER_ADVICE) in errors[0] and "EDURANKER_KAFKA_BOOTSTRAP" in BROKER_ADVICE
    assert any("event=broker_reachable_again" in r.getMessage() for r in caplog.records)
