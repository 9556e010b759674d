"""Every HTTP service fuzzed from its own OpenAPI schema (schemathesis): no 500s, and every
answer matches the schema. Real uvicorn servers on loopback, in this process, on the real broker
and a real SQLite store; examples are bounded and derandomized, so CI runs the same cases.

The aggregator is not fuzzed here: its web side is Faust's (aiohttp), with four GET pages and no
OpenAPI schema to generate requests from; `test_aggregator.py` covers those pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from services.collector.app import create_app as collector_app
from services.reranker.app import create_app as reranker_app
from services.trainer.app import create_app as trainer_app
from shared.broker import EmbeddedBroker, free_port
from shared.catalogue import load_catalogue
from shared.kafka import ensure_topics
from shared.settings import Settings
from tests.conftest import SAMPLE_CATALOGUE
from tests.integration.served import Served

pytestmark = pytest.mark.slow  # about two minutes: unknown inferences make the collector wait ~2 s each
CHECKS = [not_a_server_error, response_schema_conformance]
FUZZ = settings(max_examples=10, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path,
         broker: EmbeddedBroker) -> Iterator[dict[str, str]]:
    workdir = tmp_path_factory.mktemp("fuzz")
    ports = {name: free_port() for name in ("collector", "reranker", "trainer")}
    config = Settings(
        store_url=f"sqlite:///{workdir / 'eduranker.db'}", model_dir=workdir / "models",
        kafka_bootstrap=broker.bootstrap, base_model=str(tiny_model), embedding_model=str(tiny_model),
        collector_port=ports["collector"], reranker_port=ports["reranker"], trainer_port=ports["trainer"],
        collector_url=f"http://127.0.0.1:{ports['collector']}", max_length=32, num_epochs=1,
    )
    ensure_topics(config)
    asyncio.run(load_catalogue(config.store_url, SAMPLE_CATALOGUE))
    with Served(collector_app(config), ports["collector"], "collector"), \
            Served(reranker_app(config), ports["reranker"], "reranker"), \
            Served(trainer_app(config), ports["trainer"], "trainer"):
        yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}


def fuzz(base_url: str) -> list[str]:
    """Runs every operation of the service's schema; returns the failures, one line each."""
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @FUZZ
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=60)

        try:
            run()
        except Exception as exc:  # every operation is fuzzed, then all failures are reported
            failures.append(f"{operation.label}: {str(exc)[:2000]}")
    return failures


@pytest.mark.parametrize("service", ["collector", "reranker", "trainer"])
def test_no_server_errors_and_answers_match_the_schema(urls: dict[str, str], service: str) -> None:
    failures = fuzz(urls[service])
    assert not failures, "\n\n".join(failures)
