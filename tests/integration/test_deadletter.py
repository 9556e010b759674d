"""Malformed and unknown-schema messages on the trainer's and the reranker's topics: each is set
aside on the dead-letter topic with the reason, and both consumers go on with the next message.
The trainer and the reranker run in this process (uvicorn threads) on the real broker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.reranker.app import create_app as reranker_app
from services.trainer.app import create_app as trainer_app
from shared.events import MODEL_READY_TOPIC, TRAINING_REQUESTED_TOPIC, ModelReadyEvent, TrainingRequestedEvent
from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker, free_port
from shared.messaging.deadletters import DEADLETTER_TOPIC
from shared.records import new_id
from shared.settings import Settings
from tests.integration.bus import TopicReader, send
from tests.integration.served import Served
from tools.localstack import wait_for


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, broker: EmbeddedBroker) -> Settings:
    workdir = tmp_path_factory.mktemp("deadletter")
    settings = Settings(store_url=f"sqlite:///{workdir / 'eduranker.db'}", model_dir=workdir / "models",
                        kafka_bootstrap=broker.bootstrap, base_model=str(tiny_model),
                        embedding_model=str(tiny_model), trainer_port=free_port(), reranker_port=free_port())
    ensure_topics(settings)
    return settings


@pytest.fixture(scope="module")
def services(settings: Settings) -> Iterator[tuple[Served, Served]]:
    with Served(trainer_app(settings), settings.trainer_port, "trainer") as trainer, \
            Served(reranker_app(settings), settings.reranker_port, "reranker") as reranker:
        yield trainer, reranker


def bad_messages(marker: str, valid: dict) -> dict[str, bytes]:
    """Garbage, the wrong shape, and a schema version this code does not know; each carries `marker`."""
    return {
        "not json": f"garbage {marker}".encode(),
        "wrong shape": json.dumps({"event_id": marker, "surprise": True}).encode(),
        "unknown schema": json.dumps({**valid, "event_id": marker, "schema_version": 2}).encode(),
    }


def read_until(reader: TopicReader, found: dict, wanted: int, what: str) -> dict:
    def poll() -> bool:
        found.update(reader.poll())
        return len(found) >= wanted

    wait_for(poll, 60, 0.0, what)
    return found


def test_bad_messages_are_dead_lettered_and_both_consumers_go_on(
        settings: Settings, services: tuple[Served, Served], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    trainer, reranker = services
    marker = new_id()
    dead = TopicReader(settings, DEADLETTER_TOPIC)
    answers = TopicReader(settings, MODEL_READY_TOPIC)
    try:
        sent: dict[str, str] = {}
        request = TrainingRequestedEvent(reason="manual").model_dump(mode="json")
        ready = ModelReadyEvent(version="v0001", location="v0001", base_model="m",
                                decision="rejected").model_dump(mode="json")
        for topic, valid in ((TRAINING_REQUESTED_TOPIC, request), (MODEL_READY_TOPIC, ready)):
            bad = bad_messages(marker, valid)
            send(settings, topic, *bad.values())
            sent |= {f"{topic} {kind}": payload.decode() for kind, payload in bad.items()}
        # Then good messages: handled only if the consumers survived what came before.
        good_request = TrainingRequestedEvent(reason="manual")
        send(settings, TRAINING_REQUESTED_TOPIC, good_request, key="training")
        good_ready = ModelReadyEvent(version=f"v-{marker}", location="v9999", base_model="m",
                                     decision="rejected")
        send(settings, MODEL_READY_TOPIC, good_ready, key="model")

        letters = [json.loads(v) for v in read_until(dead, {}, 6, "six dead letters").values()]
        ours = {name: d for d in letters for name, payload in sent.items()
                if d.get("payload") == payload and name.startswith(d["topic"] + " ")}
        assert set(ours) == set(sent), letters
        for name, letter in ours.items():
            assert letter["reason"] and letter["offset"] is not None, name
        assert "schema_version" in ours[f"{TRAINING_REQUESTED_TOPIC} unknown schema"]["reason"]
        assert "schema_version" in ours[f"{MODEL_READY_TOPIC} unknown schema"]["reason"]

        def answered() -> ModelReadyEvent | None:
            for event in answers.events():  # a reason for our bad ones
                if getattr(event, "request_event_id", None) == good_request.event_id:
                    return event  # type: ignore[return-value]
            return None

        reply = wait_for(answered, 60, 0.0, "the trainer to answer the good request")
        assert reply.decision == "skipped"  # an empty store: below the minimum, as it should be
        wait_for(lambda: f"event=model_ready_received version=v-{marker}" in caplog.text, 30, 0.2,
                 "the reranker to read the good model.ready")
    finally:
        dead.close()
        answers.close()
    for service in (trainer, reranker):
        assert httpx.get(service.url + "/ready", timeout=10).status_code == 200, service.name
    assert "event=dead_letter topic=eduranker.training.requested.v1" in caplog.text
    assert "event=dead_letter topic=eduranker.model.ready.v1" in caplog.text
