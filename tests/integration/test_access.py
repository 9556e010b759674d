"""Who may change EduRanker, over real HTTP: API keys (settings and a rotating keys file), the
search page's server-side key, and the request body limit. The collector and the reranker run
in this process (uvicorn threads) on the real broker and a real SQLite store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.collector.app import create_app as collector_app
from services.reranker.app import create_app as reranker_app
from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker, free_port
from shared.settings import Settings
from tests.conftest import ROOT, SAMPLE_CATALOGUE
from tests.integration.served import Served
from tools.catalogue import load_catalogue
from tools.localstack import wait_for

ADMIN_KEYS = ("admin-key-one", "admin-key-two")
FEEDBACK_KEY = "feedback-key-from-env"
PAGE_KEY = "page-key-kept-on-the-server"
LIMIT = 64 * 1024
SEARCH = "/api/reranking/search-with-reranking"


class Stack:
    def __init__(self, collector: Served, reranker: Served, keys_file: Path) -> None:
        self.collector, self.reranker, self.keys_file = collector.url, reranker.url, keys_file

    def write_keys(self, text: str) -> None:
        """Replaces the keys file the way a Secret update does, with a new modification time."""
        before = self.keys_file.stat().st_mtime_ns if self.keys_file.exists() else 0
        tmp = self.keys_file.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.keys_file)
        os.utime(self.keys_file, ns=(before + 10**9, before + 10**9))

    def shown(self) -> tuple[str, str]:
        """A search anyone may run (search is open by default): an inference and a result of it."""
        response = httpx.post(self.reranker + SEARCH, json={"query_text": "photosynthesis", "top_k": 3},
                              timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        return body["inference_id"], body["results"][0]["resource_id"]

    def feedback(self, key: str | None, label: str = "like", base: str | None = None) -> httpx.Response:
        inference_id, resource_id = self.shown()
        headers = {"X-API-Key": key} if key is not None else {}
        return httpx.post(f"{base or self.collector}/api/feedback", headers=headers, timeout=30,
                          json={"inference_id": inference_id, "resource_id": resource_id, "feedback": label})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path,
          broker: EmbeddedBroker) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("access")
    keys_file = workdir / "secret" / "api-keys"
    keys_file.parent.mkdir()
    keys_file.write_text("feedback file-key-a\n")
    collector_port, reranker_port = free_port(), free_port()
    settings = Settings(
        store_url=f"sqlite:///{workdir / 'eduranker.db'}", model_dir=workdir / "models",
        kafka_bootstrap=broker.bootstrap, base_model=str(tiny_model), embedding_model=str(tiny_model),
        collector_port=collector_port, reranker_port=reranker_port,
        collector_url=f"http://127.0.0.1:{collector_port}",
        admin_keys=",".join(ADMIN_KEYS), feedback_keys=f"{FEEDBACK_KEY}, {PAGE_KEY}",
        api_keys_file=keys_file, page_feedback_key=PAGE_KEY, max_body_bytes=LIMIT,
    )
    ensure_topics(settings)
    asyncio.run(load_catalogue(settings.store_url, SAMPLE_CATALOGUE))
    with Served(collector_app(settings), collector_port, "collector") as collector, \
            Served(reranker_app(settings), reranker_port, "reranker") as reranker:
        yield Stack(collector, reranker, keys_file)


def test_feedback_writes_need_a_feedback_or_admin_key(stack: Stack) -> None:
    missing = stack.feedback(None)
    assert missing.status_code == 401, missing.text
    assert "needs a key" in missing.json()["detail"] and "X-API-Key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "X-API-Key"
    wrong = stack.feedback("not-a-key")
    assert wrong.status_code == 403 and "not a feedback key" in wrong.json()["detail"]
    assert stack.feedback(FEEDBACK_KEY).json()["status"] == "created"
    assert stack.feedback(ADMIN_KEYS[1]).status_code == 200
    assert stack.feedback("file-key-a").status_code == 200
    batch = {"items": [{"inference_id": "x", "resource_id": "y", "feedback": "like"}]}
    assert httpx.post(f"{stack.collector}/api/feedback/batch", json=batch, timeout=30).status_code == 401
    answered = httpx.post(f"{stack.collector}/api/feedback/batch", json=batch, timeout=30,
                          headers={"X-API-Key": FEEDBACK_KEY})
    assert answered.status_code == 200 and answered.json()["accepted"] == 0  # unknown inference


def test_catalogue_writes_need_an_admin_key(stack: Stack) -> None:
    body = {"resources": [{"id": "access-res-1", "title": "Key rotation for beginners"}]}
    url = f"{stack.reranker}/api/resources"
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    refused = httpx.post(url, json=body, headers={"X-API-Key": FEEDBACK_KEY}, timeout=30)
    assert refused.status_code == 403 and "not an admin key" in refused.json()["detail"]
    assert httpx.get(f"{url}/access-res-1", timeout=10).status_code == 404  # nothing written
    accepted = httpx.post(url, json=body, headers={"X-API-Key": ADMIN_KEYS[0]}, timeout=60)
    assert accepted.status_code == 200 and accepted.json() == {"upserted": 1}
    assert httpx.get(f"{url}/access-res-1", timeout=10).json()["title"] == "Key rotation for beginners"
    for method, path in (("POST", "/hide"), ("POST", "/unhide"), ("DELETE", "")):
        assert httpx.request(method, f"{url}/access-res-1{path}", timeout=30).status_code == 401, path
        refused = httpx.request(method, f"{url}/access-res-1{path}", headers={"X-API-Key": FEEDBACK_KEY},
                                timeout=30)
        assert refused.status_code == 403, path
    assert httpx.get(f"{url}/access-res-1", timeout=10).status_code == 200  # neither hidden nor removed
    removed = httpx.delete(f"{url}/access-res-1", headers={"X-API-Key": ADMIN_KEYS[1]}, timeout=60)
    assert removed.status_code == 200 and removed.json()["state"] == "removed"


def test_keys_in_the_file_rotate_without_a_restart(stack: Stack) -> None:
    assert stack.feedback("file-key-a").status_code == 200
    stack.write_keys('{"feedback": ["file-key-b"], "admin": "file-admin-key"}')
    assert stack.feedback("file-key-a").status_code == 403
    assert stack.feedback("file-key-b").status_code == 200
    assert stack.feedback("file-admin-key").status_code == 200
    stack.write_keys("feedback file-key-b\nthis line is not a key entry\n")  # half-edited: refused
    assert stack.feedback("file-key-b").status_code == 200, "the last good keys stay in force"
    assert stack.feedback(FEEDBACK_KEY).status_code == 200, "keys from the settings are not rotated"
    stack.write_keys("# back to one key\nfeedback file-key-a\n")
    assert stack.feedback("file-key-b").status_code == 403
    assert stack.feedback("file-key-a").status_code == 200


def test_the_page_forwards_feedback_with_its_own_key_and_never_shows_it(stack: Stack) -> None:
    forwarded = stack.feedback(None, base=stack.reranker)
    assert forwarded.status_code == 200, forwarded.text
    for path in ("/", "/static/page.js", "/api/ui/status"):
        assert PAGE_KEY not in httpx.get(stack.reranker + path, timeout=30).text, path


def test_keys_are_never_logged(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert stack.feedback("a-wrong-key-to-look-for").status_code == 403
    assert stack.feedback(None).status_code == 401
    assert stack.feedback(FEEDBACK_KEY).status_code == 200
    stack.write_keys("feedback file-key-a\nfeedback file-key-c\n")
    assert stack.feedback("file-key-c").status_code == 200
    assert "event=api_key_refused role=feedback reason=wrong" in caplog.text
    assert "event=api_keys_loaded" in caplog.text
    for secret in ("a-wrong-key-to-look-for", FEEDBACK_KEY, "file-key-a", "file-key-c", PAGE_KEY,
                   *ADMIN_KEYS):
        assert secret not in caplog.text


def test_bodies_over_the_limit_are_refused_before_parsing(stack: Stack) -> None:
    def stats() -> int:
        return httpx.get(f"{stack.collector}/api/feedback/stats", timeout=30).json()["feedback"]["total"]

    before = stats()
    inference_id, resource_id = stack.shown()
    item = {"inference_id": inference_id, "resource_id": resource_id, "feedback": "dislike",
            "user_id": "u" * 190}
    too_big = {"items": [{**item, "request_id": f"r{i}"} for i in range(400)]}
    headers = {"X-API-Key": FEEDBACK_KEY, "content-type": "application/json"}
    content = httpx.Request("POST", "/", json=too_big).content
    assert len(content) > LIMIT
    declared = httpx.post(f"{stack.collector}/api/feedback/batch", content=content, headers=headers,
                          timeout=30)
    assert declared.status_code == 413 and "EDURANKER_MAX_BODY_BYTES" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for start in range(0, len(content), 8192):
            yield content[start:start + 8192]

    chunked = httpx.post(f"{stack.collector}/api/feedback/batch", content=chunks(), headers=headers,
                         timeout=30)
    assert chunked.status_code == 413 and str(LIMIT) in chunked.json()["detail"]
    search = httpx.post(stack.reranker + SEARCH, content=b'{"query_text": "' + b"a" * LIMIT + b'"}',
                        headers={"content-type": "application/json"}, timeout=30)
    assert search.status_code == 413
    assert stats() == before, "a refused body stores nothing"
    small = {"items": [{**item, "request_id": "small"}]}

    def small_chunks() -> Iterator[bytes]:
        yield httpx.Request("POST", "/", json=small).content

    fits = httpx.post(f"{stack.collector}/api/feedback/batch", content=small_chunks(), headers=headers,
                      timeout=30)
    assert fits.status_code == 200 and fits.json()["accepted"] == 1, fits.text
    assert stats() == before + 1


def start_command(service: str, tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    """`python -m services.<service>` as compose and Kubernetes run it, with `env` on top."""
    return subprocess.Popen(
        [sys.executable, "-m", f"services.{service}"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "EDURANKER_STORE_URL": f"sqlite:///{tmp_path / 'db'}",
                                     "EDURANKER_FAUST_DATADIR": str(tmp_path / "faust"), **env})


def test_a_service_others_can_reach_refuses_to_start_with_writes_open_or_a_placeholder_key(
        tmp_path: Path) -> None:
    public = {"EDURANKER_HOST": "0.0.0.0"}
    cases = {  # service: (environment, what the refusal must name)
        "collector": (public, "give EDURANKER_FEEDBACK_KEYS"),
        "reranker": (public, "give EDURANKER_ADMIN_KEYS"),
        "trainer": ({**public, "EDURANKER_ADMIN_KEYS": "change-me-admin"}, "EDURANKER_ADMIN_KEYS holds a "
                    "placeholder"),
        "aggregator": ({"EDURANKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "EDURANKER_KAFKA_SASL_USERNAME": "u",
                        "EDURANKER_KAFKA_SASL_PASSWORD": "change-me"}, "EDURANKER_KAFKA_SASL_PASSWORD holds"),
    }
    started = {service: start_command(service, tmp_path / service, **env)
               for service, (env, _) in cases.items()}
    for service, process in started.items():
        _, err = process.communicate(timeout=180)
        assert process.returncode == 2, (service, err[-2000:])
        assert err.startswith(f"error: the {service} refuses to start"), (service, err[-2000:])
        assert cases[service][1] in err and "Traceback" not in err, (service, err[-2000:])


def test_a_setting_it_cannot_use_stops_every_service_naming_the_variable_not_its_secret(
        tmp_path: Path) -> None:
    wrong = {"EDURANKER_EXPLORE_SHARE": "ten percent", "EDURANKER_STORE_URL": "postgres://u:s3cret@db/x"}
    started = {service: start_command(service, tmp_path / service, **wrong)
               for service in ("collector", "reranker", "trainer", "aggregator")}
    for service, process in started.items():
        _, err = process.communicate(timeout=180)
        assert process.returncode == 2, (service, err[-2000:])
        assert err.startswith(f"error: the {service} cannot start:\n- "), (service, err[-2000:])
        assert "\n- EDURANKER_STORE_URL: Value error, unsupported store URL (it starts 'postgres://')" in err
        assert "\n- EDURANKER_EXPLORE_SHARE='ten percent': Input should be a valid number" in err
        assert "s3cret" not in err and "Traceback" not in err, (service, err[-2000:])


def test_opened_on_purpose_the_service_starts_on_every_interface(tmp_path: Path,
                                                                 broker: EmbeddedBroker) -> None:
    port = free_port()
    collector = start_command("collector", tmp_path, EDURANKER_HOST="0.0.0.0",
                              EDURANKER_ALLOW_OPEN_WRITES="true", EDURANKER_COLLECTOR_PORT=str(port),
                              EDURANKER_KAFKA_BOOTSTRAP=broker.bootstrap)
    try:
        def health() -> bool:
            assert collector.poll() is None, collector.communicate()[1][-2000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(health, 120, 0.3, "the collector opened on purpose to answer")
    finally:
        collector.terminate()
        collector.communicate(timeout=60)
