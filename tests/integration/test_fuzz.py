"""Every HTTP service fuzzed from its own OpenAPI schema (schemathesis): no 500s, and every
answer matches the schema; then bodies outside the schemas (negative cases, and JSON that
Python's parser takes but no JSON encoder may write back, bytes that are not UTF-8, other
content types): a 4xx that says what is wrong. Real uvicorn servers on loopback, in this
process, on the real broker and a real SQLite store; examples are bounded and derandomized, so
CI runs the same cases.

The aggregator is not fuzzed here: its web side is Faust's (aiohttp), with four GET pages and no
OpenAPI schema to generate requests from; `test_aggregator.py` covers those pages.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from services.collector import intake
from services.collector.app import create_app as collector_app
from services.reranker.app import create_app as reranker_app
from services.trainer.app import create_app as trainer_app
from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker, free_port
from shared.settings import Settings
from tests.conftest import SAMPLE_CATALOGUE
from tests.integration.served import Served
from tools.catalogue import load_catalogue

pytestmark = [
    pytest.mark.slow,
    # schemathesis's negative mode draws with `random` inside its own strategies (not ours to change)
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"
                               ":hypothesis.errors.HypothesisDeprecationWarning"),
]
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
    # Every fuzzed inference id is unknown, and the collector looks one up again for ~2 s (a click
    # may overtake its search's record): one short retry here keeps the path, not the wait.
    with pytest.MonkeyPatch.context() as patch, \
            Served(collector_app(config), ports["collector"], "collector"), \
            Served(reranker_app(config), ports["reranker"], "reranker"), \
            Served(trainer_app(config), ports["trainer"], "trainer"):
        patch.setattr(intake, "INFERENCE_GRACE_S", (0.01,))
        yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}


def fuzz(base_url: str, mode: GenerationMode = GenerationMode.POSITIVE) -> list[str]:
    """Runs every operation of the service's schema; returns the failures, one line each."""
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not mode.is_positive and not (len(operation.body) or len(operation.query)):
            continue  # a path's strings cannot be made invalid: nothing to send outside the schema

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS if mode.is_positive else [not_a_server_error], timeout=60)

        try:
            run()
        except Exception as exc:  # every operation is fuzzed, then all failures are reported
            failures.append(f"{operation.label}: {str(exc)[:2000]}")
    return failures


@pytest.mark.parametrize("service", ["collector", "reranker", "trainer"])
def test_no_server_errors_and_answers_match_the_schema(urls: dict[str, str], service: str) -> None:
    failures = fuzz(urls[service])
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("service", ["collector", "reranker", "trainer"])
def test_bodies_outside_the_schema_are_refused_not_server_errors(urls: dict[str, str], service: str) -> None:
    failures = fuzz(urls[service], GenerationMode.NEGATIVE)
    assert not failures, "\n\n".join(failures)


JSON = "application/json"
# (body, content type, status (None: any 4xx), what the answer's detail must say (None: anything))
HOSTILE: list[tuple[bytes, str, int | None, str | None]] = [
    (b'{"query_text": NaN}', JSON, 422, "NaN is not a JSON value"),
    (b'{"top_k": Infinity, "items": [-Infinity]}', JSON, 422, "Infinity is not a JSON value"),
    (b'{"top_k": 1e400}', JSON, 422, "beyond the largest a double holds"),
    (b'{"top_k": ' + b"9" * 5000 + b"}", JSON, 422, "at most 4300 digits"),
    (b"[" * 50_000 + b"]" * 50_000, JSON, 422, "nested too deeply"),
    (b'{"query_text": "caf\xe9"}', JSON, 422, "not UTF-8"),
    (b'{"query_text": "\\ud800", "query": "\\udfff", "items": ["\\ud800"]}', JSON, 422, None),
    (b"\xff\xfe\x00garbage", "text/plain", 415, "Content-Type: application/json"),
    (b'{"query_text": "x"}', "text/plain", 415, "Content-Type: application/json"),
    (b"query_text=x", "application/x-www-form-urlencoded", 415, "Content-Type: application/json"),
    (b"--b\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b", 415, "Content-Type: application/json"),
    (b'{"query_text": ', JSON, 422, "JSON decode error"),
    (b"[1, 2, 3]", JSON, 422, None),
    (b'"just a string"', JSON, 422, None),
    (b'{"query_text": {"nested": [1, {"a": null}]}, "top_k": "ten", "items": 7}', JSON, None, None),
    (b'{"query_text": true, "documents": [{"id": 1e308, "text": -1e308}], "items": [{}]}', JSON, None, None),
    (b'{"epochs": -9223372036854775809, "learning_rate": 1e-400, "seed": 1e18}', JSON, None, None),
    (b'{"seed": 4294967296}', JSON, None, None),  # accepted, it failed the run later (numpy's limit)
    (b'{"a_misspelt_field": 1}', JSON, 422, "a_misspelt_field"),  # refused by name, never ignored
]
# Bodies sent with other headers: (body, headers, status, what the detail must say)
HOSTILE_HEADERS: list[tuple[bytes, dict[str, str], int, str]] = [
    (gzip.compress(b'{"query_text": "x"}'), {"Content-Type": JSON, "Content-Encoding": "gzip"}, 415,
     "must not be compressed"),
    (b'{"query_text": "x"}', {"Content-Type": JSON, "Content-Encoding": "br"}, 415, "must not be compressed"),
]


def body_routes(base_url: str) -> list[tuple[str, str]]:
    """(method, path) of every operation that takes a request body, from the service's own schema."""
    schema = httpx.get(base_url + "/openapi.json", timeout=30).json()
    return [(method.upper(), path.replace("{version}", "v0001"))
            for path, item in schema["paths"].items() for method, operation in item.items()
            if isinstance(operation, dict) and "requestBody" in operation]


@pytest.mark.parametrize("service", ["collector", "reranker", "trainer"])
def test_unusual_json_and_other_content_types_get_a_4xx_that_says_why(urls: dict[str, str],
                                                                       service: str) -> None:
    """Each body is one the error path used to fail on (a 500), or a neighbour of one."""
    routes = body_routes(urls[service])
    assert routes, "every service has at least one route with a body"
    failures = []
    with httpx.Client(base_url=urls[service], timeout=60) as client:
        for method, path in routes:
            for body, content_type, status, says in HOSTILE:
                answer = client.request(method, path, content=body, headers={"Content-Type": content_type})
                detail = answer.json().get("detail") if answer.headers.get("content-type") == JSON else None
                if not 400 <= answer.status_code < 500 or not detail:
                    failures.append(f"{method} {path} {body[:60]!r} ({content_type}): "
                                    f"{answer.status_code} {answer.text[:200]}")
                elif status is not None and answer.status_code != status:
                    failures.append(f"{method} {path} {body[:60]!r}: {answer.status_code}, not {status}")
                elif says is not None and says not in str(detail):
                    failures.append(f"{method} {path} {body[:60]!r}: {detail!r} does not say {says!r}")
            for body, headers, status, says in HOSTILE_HEADERS:
                answer = client.request(method, path, content=body, headers=headers)
                if answer.status_code != status or says not in answer.text:
                    failures.append(f"{method} {path} {headers}: {answer.status_code} {answer.text[:200]}")
    assert not failures, "\n".join(failures)
