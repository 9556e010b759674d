"""One-line structured logs (`key=value` messages) for every service."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import re
import signal
import sys

from shared.settings import Settings, get_settings

CLIENT_LOGGERS = ("kafka", "aiokafka")
# kafka-python's and aiokafka's lines for one failed attempt to reach a broker (each retry logs them),
# and kafka-python's metadata refresh cancelled by a client's own close.
CONNECTION_FAILURE = re.compile(
    r"ECONNREFUSED|Connect call failed|Connection refused|KafkaConnectionError|Unable to bootstrap|"
    r"Unable connect to|Unable to update metadata|Bootstrap (connection|attempt)|not ready; waiting|"
    r"NoBrokersAvailable|NodeNotReady|Metadata refresh: failed Cancelled")


class QuietConnectionRetries(logging.Filter):
    """Keeps the Kafka clients' per-attempt connection errors to debug.

    They log ERROR for every attempt while a broker is still starting, which reads like a
    failure; `shared.messaging.broker.BrokerOutage` logs the one error that matters, once the broker has
    stayed unreachable, with what to do.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and CONNECTION_FAILURE.search(record.getMessage()):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)  # EDURANKER_LOG_LEVEL=DEBUG shows them
        return True


def configure(service: str, settings: Settings | None = None, quiet: bool = False) -> None:
    """Logging for one process, at `EDURANKER_LOG_LEVEL`; `quiet` (a command line) defaults to warnings."""
    settings = settings or get_settings()
    level = "WARNING" if quiet and "log_level" not in settings.model_fields_set else settings.log_level
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s level=%(levelname)s service={service} logger=%(name)s %(message)s",
        force=True,
    )
    # Client libraries log every reconnect attempt at INFO; keep them to warnings.
    for noisy in ("kafka", "aiokafka", "httpx", "faust", "mode", "urllib3", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    quiet_connection_retries()
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack in the log, for a hang
        with contextlib.suppress(AttributeError, ValueError):  # stderr no file (captured): no dump
            faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)


def quiet_connection_retries() -> None:
    """Puts `QuietConnectionRetries` on every Kafka client logger.

    On the loggers themselves, not on handlers: Faust's worker replaces the root handlers, and a
    logger's filters do not reach its children (kafka.net.manager...), so the client packages
    are imported here first, which creates all their loggers.
    """
    import aiokafka  # noqa: F401
    import kafka  # noqa: F401

    quiet = QuietConnectionRetries()
    for name in list(logging.root.manager.loggerDict):
        if name.partition(".")[0] in CLIENT_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, QuietConnectionRetries) for f in logger.filters):
                logger.addFilter(quiet)
