"""The aggregator's policy on the real broker, malformed messages, and the `traffic` command.

Real processes: the embedded broker, the reranker (tiny model), the collector and the
aggregator. The trainer is not started; where a run must be reported, the test records it
in the store and publishes the trainer's `model.ready` event itself.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from shared.events import (
    FEEDBACK_TOPIC,
    MODEL_READY_TOPIC,
    TRAINING_REQUESTED_TOPIC,
    ModelReadyEvent,
    TrainingRequestedEvent,
)
from shared.messaging.broker import free_port
from shared.messaging.codec import encode
from shared.messaging.deadletters import DEADLETTER_TOPIC
from shared.records import TrainingRun, utcnow
from shared.store import open_store
from tests.conftest import ROOT, tiny_stack
from tests.integration.test_loop import search
from tools.localstack import LocalStack, wait_for

MIN_NEW = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LocalStack]:
    with tiny_stack(tmp_path_factory.mktemp("aggregator"), tiny_model,
                    services=("reranker", "collector", "aggregator"), train_min_feedback=10,
                    train_min_new_feedback=MIN_NEW, train_min_per_class=3, train_max_imbalance=0.9,
                    train_cooldown_s="1h") as running:
        yield running


def read_topic(stack: LocalStack, topic: str, timeout_s: float = 10.0) -> list[bytes]:
    """Every message of the topic's partition 0, from the start to its current end."""
    consumer = KafkaConsumer(bootstrap_servers=stack.settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end:
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout_s}s"
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
        return values
    finally:
        consumer.close()


def aggregator(stack: LocalStack) -> dict:
    return httpx.get(f"{stack.url('aggregator')}/stats", timeout=10).json()


def rate(stack: LocalStack, results: list[tuple[str, str]], labels: list[str]) -> None:
    for (inference_id, resource_id), label in zip(results, labels, strict=True):
        response = httpx.post(f"{stack.url('collector')}/api/feedback", timeout=30, json={
            "inference_id": inference_id, "resource_id": resource_id, "feedback": label})
        assert response.status_code == 200 and response.json()["status"] == "created", response.text


def shown(stack: LocalStack, queries: list[str]) -> list[tuple[str, str]]:
    return [(body["inference_id"], r["resource_id"]) for body in (search(stack, q) for q in queries)
            for r in body["results"]]


def test_policy_fires_exactly_at_its_threshold_and_not_during_the_cooldown(stack: LocalStack) -> None:
    results = shown(stack, ["machine learning tutorial", "linear algebra for beginners",
                            "python for data analysis", "introduction to neural networks"])
    labels = ["like", "dislike"] * 20
    rate(stack, results[:MIN_NEW - 1], labels[:MIN_NEW - 1])
    stats = wait_for(lambda: (s := aggregator(stack))["counts"]["total"] == MIN_NEW - 1 and s, 30, 0.2,
                     "19 feedback counted")
    # The policy runs right after each count: had it fired at 19, the request would show as pending.
    assert not stats["pending_request"]
    assert stats["policy"]["blocked_by"] == "19 new feedback since the last training, fewer than 20"

    rate(stack, results[MIN_NEW - 1:MIN_NEW], labels[MIN_NEW - 1:MIN_NEW])
    wait_for(lambda: aggregator(stack)["pending_request"], 30, 0.2, "a training request")
    requests = read_topic(stack, TRAINING_REQUESTED_TOPIC)
    assert len(requests) == 1
    request = TrainingRequestedEvent.model_validate_json(requests[0])
    assert request.reason == "threshold"
    assert (request.counts.total, request.counts.new_since_training) == (MIN_NEW, MIN_NEW)
    assert (request.counts.like, request.counts.dislike) == (10, 10)

    # The trainer reports back: the run is in the store, then `model.ready` names the request.
    asyncio.run(record_run(stack, request.event_id))
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap, acks="all")
    ready = ModelReadyEvent(version="v0001", location="v0001", base_model="tiny", decision="promoted",
                            request_event_id=request.event_id)
    producer.send(MODEL_READY_TOPIC, encode(ready)).get(timeout=10)
    producer.close()
    stats = wait_for(lambda: (s := aggregator(stack))["origin"]["reason"] == "training" and s, 30, 0.2,
                     "the counts rebuilt after the report")
    assert not stats["pending_request"]
    assert stats["feedback"]["since_last_training"] == {"total": 0, "like": 0, "dislike": 0}
    assert stats["feedback"]["total"] == MIN_NEW and stats["feedback"]["last_training_at"]

    # Enough new feedback again, but within the cooldown: no second request.
    rate(stack, results[MIN_NEW:2 * MIN_NEW], labels[MIN_NEW:2 * MIN_NEW])
    stats = wait_for(lambda: (s := aggregator(stack))["counts"]["new_since_training"] == MIN_NEW and s,
                     30, 0.2, "20 new feedback counted")
    assert stats["policy"]["blocked_by"].startswith("cooldown: ")
    assert not stats["pending_request"]
    assert len(read_topic(stack, TRAINING_REQUESTED_TOPIC)) == 1


async def record_run(stack: LocalStack, request_event_id: str) -> None:
    store = await open_store(stack.settings.store_url)
    try:
        now = utcnow()
        await store.save_training_run(TrainingRun(
            run_id="run-1", request_event_id=request_event_id, reason="threshold", status="promoted",
            version="v0001", started_at=now - timedelta(milliseconds=1), finished_at=now))
    finally:
        await store.close()


def test_malformed_messages_go_to_the_dead_letter_topic(stack: LocalStack) -> None:
    before = aggregator(stack)["counts"]["total"]
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap, acks="all")
    for topic, payload in ((FEEDBACK_TOPIC, b"{not json"), (FEEDBACK_TOPIC, b'{"label": "like"}'),
                           (MODEL_READY_TOPIC, b"\xff\xfe")):
        producer.send(topic, payload).get(timeout=10)
    producer.close()
    # Counting goes on after them.
    rate(stack, shown(stack, ["SQL joins explained"])[:1], ["like"])
    wait_for(lambda: aggregator(stack)["counts"]["total"] == before + 1, 30, 0.2, "the next feedback counted")
    def set_aside() -> list[dict]:
        # Every consumer of a topic sets a bad message aside on its own (the reranker reads
        # model.ready too): one letter per message is what this test is about.
        letters = {(d["topic"], d["partition"], d["offset"]): d
                   for d in (json.loads(r) for r in read_topic(stack, DEADLETTER_TOPIC))}
        return [letters[k] for k in sorted(letters)]

    letters = wait_for(lambda: len(found := set_aside()) >= 3 and found, 30, 0.5, "three dead letters")
    assert [d["topic"] for d in letters] == [FEEDBACK_TOPIC, FEEDBACK_TOPIC, MODEL_READY_TOPIC]
    assert "Invalid JSON" in letters[0]["reason"] and letters[0]["payload"] == "{not json"
    assert "Field required" in letters[1]["reason"]
    assert letters[2]["payload_base64"] == "//4="
    exported = httpx.get(f"{stack.url('aggregator')}/metrics", timeout=10).text
    assert f'eduranker_deadletter_total{{topic="{FEEDBACK_TOPIC}"}} 2.0' in exported


def traffic(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "traffic", "--reranker", stack.url("reranker"),
         "--collector", stack.url("collector"), *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


def collector_feedback(stack: LocalStack) -> dict:
    return httpx.get(f"{stack.url('collector')}/api/feedback/stats", timeout=30).json()["feedback"]


def test_traffic_plays_searches_and_feedback_at_a_rate(stack: LocalStack) -> None:
    before = collector_feedback(stack)
    done = traffic(stack, "--count", "30", "--rate", "60", "--seed", "1", "--mark-test")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = dict(part.split("=") for part in done.stdout.split())
    assert summary["feedback"] == "30" and summary["refused"] == "0"
    assert int(summary["like"]) + int(summary["dislike"]) == 30
    assert float(summary["elapsed_s"]) >= 29 / 60  # paced: 30 feedback at 60 per second
    after = collector_feedback(stack)
    assert (after["total"] - before["total"], after["test"] - before["test"]) == (30, 30)
    wait_for(lambda: aggregator(stack)["feedback"]["total"] == after["total"], 30, 0.2, "the traffic counted")


def test_traffic_labels_from_relevance_judgments(stack: LocalStack, tmp_path: Path) -> None:
    queries = {"q1": "machine learning tutorial", "q2": "calculus derivatives exercises"}
    relevant = {qid: [r["resource_id"] for r in search(stack, text)["results"][::3]]
                for qid, text in queries.items()}
    (tmp_path / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": qid, "text": text}) + "\n" for qid, text in queries.items())
        + json.dumps({"_id": "unjudged", "text": "history of art"}) + "\n")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{qid}\t{doc}\t{1 + n % 2}\n" for qid, docs in relevant.items() for n, doc in enumerate(docs)))

    judged = ("--queries", str(tmp_path / "queries.jsonl"), "--qrels", str(tmp_path / "qrels.tsv"))
    done = traffic(stack, *judged, "--count", "40", "--skip", "0", "--seed", "7", "--mark-test")
    assert done.returncode == 0, done.stdout + done.stderr

    async def labelled() -> list[tuple[str, str, str]]:
        store = await open_store(stack.settings.store_url)
        try:
            mine = [f for f in await store.list_feedback(include_test=True) if f.session_id == "traffic-7"]
            inferences = await store.get_inferences([f.inference_id for f in mine])
            return [(inferences[f.inference_id].query, f.resource_id, f.label) for f in mine]
        finally:
            await store.close()

    rows = asyncio.run(labelled())
    assert len(rows) == 40
    by_text = {text: qid for qid, text in queries.items()}
    assert {query for query, _, _ in rows} <= set(by_text), "only judged queries are searched"
    for query, resource_id, label in rows:
        assert label == ("like" if resource_id in relevant[by_text[query]] else "dislike")
    assert {label for _, _, label in rows} == {"like", "dislike"}

    (tmp_path / "other.tsv").write_text("query-id\tcorpus-id\tscore\nq9\tres-0001\t1\n")
    refused = traffic(stack, "--queries", judged[1], "--qrels", str(tmp_path / "other.tsv"))
    assert refused.returncode == 2 and "the query ids must match" in refused.stdout


def test_traffic_stops_with_a_reason_when_nothing_can_be_rated(stack: LocalStack, tmp_path: Path) -> None:
    """Queries the catalogue does not match, or an address where nothing answers: the command says
    so and exits 1 instead of searching forever or printing a traceback."""
    unmatched = tmp_path / "queries.txt"
    unmatched.write_text("qqqzzzxq\nxqzzqq vvwwq\n")
    before = collector_feedback(stack)["total"]
    done = traffic(stack, "--queries", str(unmatched), "--count", "5")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the last 100 searches found nothing: do the queries" in done.stderr
    assert collector_feedback(stack)["total"] == before

    nobody = subprocess.run(
        [sys.executable, "-m", "tools.cli", "traffic", "--reranker", f"http://127.0.0.1:{free_port()}",
         "--count", "5"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert nobody.returncode == 1 and "Traceback" not in nobody.stderr, nobody.stderr
    assert "cannot reach http://127.0.0.1:" in nobody.stderr and "`make run` starts it" in nobody.stderr


def test_a_readable_changelog_is_kept(stack: LocalStack) -> None:
    """The start-up check that drops an unreadable changelog leaves a healthy one alone: the
    aggregator's own changelog has records, an empty topic has nothing to read, a missing one
    is not there. (The unreadable case is the broker-restart test in test_faults.py.)"""
    from services.aggregator.app import TABLE, create_app
    from shared.messaging.admin import ensure_topics, unreadable_partitions

    changelog = create_app(stack.settings).tables[TABLE].changelog_topic.get_topic_name()
    ensure_topics(stack.settings, ("eduranker.test.empty.v1",))
    with closing(KafkaConsumer(bootstrap_servers=stack.settings.kafka_bootstrap)) as consumer:
        end = consumer.end_offsets([TopicPartition(changelog, 0)])
    assert next(iter(end.values())) > 0, "the aggregator has written its changelog"
    for topic in (changelog, "eduranker.test.empty.v1", "eduranker.test.missing.v1"):
        assert unreadable_partitions(stack.settings, topic, timeout_s=5) == [], topic
