"""Shared fixtures: the real embedded broker, a MongoDB (SecantusDB), a tiny BERT built from a config
(`tools.tiny_model`), the sample data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shared.messaging.broker import EmbeddedBroker
from tests.mongodb import MONGODB_URL_ENV, SecantusDB
from tools.localstack import SERVICES, LocalStack
from tools.tiny_model import build_tiny_bert

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CATALOGUE = ROOT / "data" / "sample_catalogue.jsonl"
DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture(scope="session")
def mongodb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a MongoDB server for the session (tests/mongodb.py): each user takes a database of
    its own (`tests.mongodb.database_url`). SecantusDB on a free loopback port, unless
    EDURANKER_TEST_MONGODB_URL names a MongoDB to run against instead."""
    if url := os.environ.get(MONGODB_URL_ENV):
        yield url
        return
    with SecantusDB(tmp_path_factory.mktemp("mongodb") / "data") as server:
        yield server.url


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path / "models", ignore_errors=True)


def tiny_env(tiny_model: Path, **settings: object) -> dict[str, str]:
    """A stack's environment on the tiny model; `settings` are EDURANKER_* overrides by field name."""
    return {"EDURANKER_BASE_MODEL": str(tiny_model), "EDURANKER_EMBEDDING_MODEL": str(tiny_model),
            **{f"EDURANKER_{name.upper()}": str(value) for name, value in settings.items()}}


@contextmanager
def tiny_stack(workdir: Path, tiny_model: Path, services: tuple[str, ...] = SERVICES,
               **settings: object) -> Iterator[LocalStack]:
    """The broker and `services` as real processes on the tiny model, serving the sample catalogue."""
    with LocalStack(workdir, env=tiny_env(tiny_model, **settings)) as running:
        running.start(catalogue=SAMPLE_CATALOGUE, services=services)
        yield running
