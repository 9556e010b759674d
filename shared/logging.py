"""One-line structured logs (`key=value` messages) for every service."""

from __future__ import annotations

import logging
import os


def configure(service: str) -> None:
    level = os.environ.get("EDURANKER_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s level=%(levelname)s service={service} logger=%(name)s %(message)s",
        force=True,
    )
    # Client libraries log every reconnect attempt at INFO; keep them to warnings.
    for noisy in ("kafka", "aiokafka", "httpx", "faust", "mode", "urllib3", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
