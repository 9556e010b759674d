"""Faults on the whole stack, as real processes on loopback: kills, a broker crash, a full disk, SIGTERM.

One stack for the module (broker, SQLite, the four services, the tiny model). Client threads search
and rate results like users; a feedback carries a request id and is retried until answered, so
"accepted" means exactly what the store must hold. After each fault the store, the collector's
statistics and the aggregator's counts must agree, every accepted feedback counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.events import MODEL_READY_TOPIC, ModelReadyEvent
from shared.store import open_store
from tests.conftest import ROOT, tiny_stack
from tests.integration.bus import TopicReader
from tests.integration.test_feedback import aggregator_stats, collector_feedback, metric, wait_until_equal
from tests.integration.test_trainer import request
from tools.localstack import LocalStack, wait_for

pytestmark = pytest.mark.slow

QUERIES = [q for q in (ROOT / "data" / "sample_queries.txt").read_text().splitlines() if q.strip()]
SEARCH = "/api/reranking/search-with-reranking"
MAX_BACKLOG = 25


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LocalStack]:
    with tiny_stack(tmp_path_factory.mktemp("faults"), tiny_model,
                    train_min_new_feedback=1000000,  # training only when a test asks for it
                    aggregator_recover_after_s=2, inference_log_max_backlog=MAX_BACKLOG, num_epochs=1,
                    max_length=64, torch_threads=1) as running:
        yield running


def read_store(stack: LocalStack, what: str) -> object:
    async def read() -> object:
        db = await open_store(stack.settings.store_url)
        try:
            if what == "feedback":
                return {(f.inference_id, f.resource_id, f.user_id): f.label
                        for f in await db.list_feedback(include_test=True)}
            if what == "inferences":
                return sum((await db.count_inferences()).values())
            if what == "outbox":
                return (await db.outbox_backlog())[0]
            return await db.list_training_runs(limit=500)
        finally:
            await db.close()

    return asyncio.run(read())


def pending_outbox(stack: LocalStack) -> int:
    return httpx.get(f"{stack.url('collector')}/api/feedback/stats", timeout=30).json()["outbox"]["pending"]


class Traffic:
    """Users in threads: search, rate one result, retry a feedback whose answer was lost."""

    def __init__(self, stack: LocalStack, clients: int = 3) -> None:
        self.stack = stack
        self.phase = "start"
        self.searches: Counter[tuple[str, str]] = Counter()
        self.accepted: dict[tuple[str, str, str], str] = {}
        self.refused: list[tuple[str, int, str]] = []
        self.busy = 0  # 503 answers, retried
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._run = uuid.uuid4().hex[:6]
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                         for n in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def wait_progress(self, more: int, timeout_s: float = 90) -> None:
        target = len(self.accepted) + more
        wait_for(lambda: len(self.accepted) >= target, timeout_s, 0.05, f"{more} more accepted feedbacks")

    def search_outcomes(self, phase: str) -> set[str]:
        return {outcome for (p, outcome) in self.searches if p == phase}

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        user = f"fault-{self._run}-{n}"
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                phase = self.phase
                try:
                    response = client.post(self.stack.url("reranker") + SEARCH, json={
                        "query_text": rng.choice(QUERIES), "use_reranker": True, "top_k": 10})
                except httpx.TransportError:
                    self._note_search(phase, "unreachable")
                    self._stop.wait(0.05)  # the reranker is down: a user tries again shortly
                    continue
                self._note_search(phase, str(response.status_code))
                if response.status_code != 200:
                    self._stop.wait(0.05)
                    continue
                found = response.json()
                shown = rng.choice(found["results"])
                key = (found["inference_id"], shown["resource_id"], user)
                self._rate(client, key, rng.choice(("like", "dislike")))

    def _note_search(self, phase: str, outcome: str) -> None:
        with self._lock:
            self.searches[(phase, outcome)] += 1

    def _rate(self, client: httpx.Client, key: tuple[str, str, str], label: str) -> None:
        """Retried with the same request id until answered: an answer lost with a killed collector
        comes back as "duplicate" if the feedback was stored."""
        payload = {"inference_id": key[0], "resource_id": key[1], "user_id": key[2], "feedback": label,
                   "request_id": uuid.uuid4().hex}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            phase = self.phase
            try:
                response = client.post(self.stack.url("collector") + "/api/feedback", json=payload)
            except httpx.TransportError:
                time.sleep(0.1)  # client back-off while the collector restarts
                continue
            if response.status_code == 503:  # the store is busy or down: retry, as Retry-After says
                self.busy += 1
                time.sleep(0.2)
                continue
            with self._lock:
                if response.status_code == 200:
                    self.accepted[key] = label
                else:
                    self.refused.append((phase, response.status_code, response.text[:200]))
            return
        with self._lock:
            self.refused.append((self.phase, 0, f"no answer within 90 s for {key}"))


def assert_nothing_lost_and_counted_once(stack: LocalStack, traffic: Traffic) -> None:
    wait_for(lambda: pending_outbox(stack) == 0, 90, 0.3, "every stored feedback to be published")
    stored = read_store(stack, "feedback")
    assert isinstance(stored, dict)
    mine = {k: v for k, v in stored.items() if k[2] and k[2].startswith(f"fault-{traffic._run}-")}
    assert mine == traffic.accepted, "the store holds exactly the feedback that was answered 200"
    expected = collector_feedback(stack)
    assert expected["total"] == len(stored)
    try:
        wait_until_equal(lambda: aggregator_stats(stack)["feedback"], expected, 90, "the aggregator's counts")
    except AssertionError as exc:  # what the aggregator last said, for a failure seen only elsewhere
        tail = stack.log("aggregator").read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}\naggregator log, last lines:\n{tail}") from None


def test_each_service_killed_mid_traffic_resumes_without_loss_or_double_count(stack: LocalStack) -> None:
    origin = aggregator_stats(stack)["origin"]
    with Traffic(stack) as traffic:
        for name in ("collector", "aggregator", "reranker"):
            traffic.phase = name
            traffic.wait_progress(8)
            stack.stop_service(name, sig=signal.SIGKILL)
            stack.start_service(name)
            stack.wait_ready(name, timeout_s=120)
            traffic.wait_progress(8)
        traffic.phase = "after"
        traffic.wait_progress(8)
    assert aggregator_stats(stack)["origin"] == origin, "restored from its changelog, not rebuilt"
    for phase in ("start", "collector", "aggregator", "after"):
        assert traffic.search_outcomes(phase) <= {"200"}, (phase, traffic.searches)
    assert traffic.search_outcomes("reranker") <= {"200", "unreachable"}
    # Searches answered just before the kill whose records were still queued in the killed reranker.
    assert all(phase == "reranker" and status == 404 for phase, status, _ in traffic.refused), traffic.refused
    assert_nothing_lost_and_counted_once(stack, traffic)


class ReadyEvents:
    """Every `model.ready` from now on, read from the end of the topic like a reranker replica."""

    def __init__(self, stack: LocalStack) -> None:
        self.reader = TopicReader(stack.settings, MODEL_READY_TOPIC)
        self.seen: dict[str, ModelReadyEvent] = {}

    def wait(self, request_ids: set[str], timeout_s: float = 180) -> dict[str, ModelReadyEvent]:
        def poll() -> bool:
            for event in self.reader.events():
                if isinstance(event, ModelReadyEvent) and event.request_event_id in request_ids:
                    self.seen[event.request_event_id] = event
            return request_ids <= set(self.seen)

        try:
            wait_for(poll, timeout_s, 0.0, f"model.ready for {len(request_ids)} requests")
        finally:
            self.reader.close()
        return self.seen


def test_trainer_killed_mid_run_and_with_a_request_pending_answers_both(stack: LocalStack) -> None:
    def runs_for(event_id: str) -> list:
        runs = read_store(stack, "runs")
        assert isinstance(runs, list)
        return [r for r in runs if r.request_event_id == event_id]

    events = ReadyEvents(stack)
    long_run = request(stack, epochs=100, early_stopping_patience=0)
    wait_for(lambda: any(r.status == "running" for r in runs_for(long_run.event_id)), 120, 0.1,
             "the long run to start")
    stack.stop_service("trainer", sig=signal.SIGKILL)
    pending = request(stack, epochs=1)  # sent while no trainer runs
    stack.start_service("trainer")
    stack.wait_ready("trainer", timeout_s=120)

    ready = events.wait({long_run.event_id, pending.event_id})
    killed = ready[long_run.event_id]
    assert killed.decision == "failed" and "stopped during the run" in killed.reason
    assert ready[pending.event_id].decision in ("promoted", "rejected", "challenger")
    assert [r.status for r in runs_for(long_run.event_id)] == ["failed"], "not trained twice"
    assert [r.status for r in runs_for(pending.event_id)] == [ready[pending.event_id].decision]


@contextlib.contextmanager
def disk_full(stack: LocalStack, services: tuple[str, ...]) -> Iterator[None]:
    """The services' writes fail as on a full disk: a file-size limit of one byte on their processes
    (RLIMIT_FSIZE; Python ignores SIGXFSZ, so write() fails with EFBIG and SQLite with an I/O error).
    Reads go on working, as on a full disk; root is bound by it too."""
    pids = [stack.processes[name].pid for name in services]
    before = [resource.prlimit(pid, resource.RLIMIT_FSIZE) for pid in pids]
    try:
        for pid, (_, hard) in zip(pids, before, strict=True):
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
        yield
    finally:
        for pid, limits in zip(pids, before, strict=True):
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)


def ready(stack: LocalStack, service: str) -> httpx.Response:
    return httpx.get(stack.url(service) + "/ready", timeout=30)


def test_store_unavailable_answers_503_says_not_ready_and_recovers(stack: LocalStack) -> None:
    reranker, collector = stack.url("reranker"), stack.url("collector")
    before = httpx.post(reranker + SEARCH, json={"query_text": QUERIES[0]}, timeout=30).json()
    wait_for(lambda: pending_outbox(stack) == 0, 60, 0.2, "a quiet outbox")
    counts = {what: read_store(stack, what) for what in ("feedback", "inferences", "outbox")}
    during: list[dict] = []
    with disk_full(stack, ("collector", "reranker")):
        refused = httpx.post(collector + "/api/feedback", timeout=30, json={
            "inference_id": before["inference_id"], "resource_id": before["results"][0]["resource_id"],
            "feedback": "like"})
        assert refused.status_code == 503, refused.text
        assert "store is unavailable" in refused.json()["detail"] and refused.headers["Retry-After"]
        not_ready = ready(stack, "collector")
        assert not_ready.status_code == 503 and not_ready.json()["checks"]["store"] is False

        def search_until_refused() -> httpx.Response | None:
            response = httpx.post(reranker + SEARCH, json={"query_text": QUERIES[1]}, timeout=30)
            if response.status_code == 200:
                during.append(response.json())
                return None
            return response

        full = wait_for(search_until_refused, 60, 0.0, "searches refused once the backlog is full")
        assert full.status_code == 503 and "search records wait" in full.json()["detail"], full.text
        assert len(during) >= MAX_BACKLOG - 1, "searches go on while the records fit in memory"
        wait_for(lambda: ready(stack, "reranker").status_code == 503, 30, 0.2, "the reranker not ready")
        # Nothing half-written: the store is as it was.
        assert {what: read_store(stack, what) for what in counts} == counts
    for service in ("collector", "reranker"):
        wait_for(lambda s=service: ready(stack, s).status_code == 200, 60, 0.2, f"{service} ready again")
    wait_for(lambda: read_store(stack, "inferences") == counts["inferences"] + len(during), 60, 0.2,
             "the searches answered during the outage to be logged")
    for found in (before, during[-1]):
        answer = httpx.post(collector + "/api/feedback", timeout=30, json={
            "inference_id": found["inference_id"], "resource_id": found["results"][0]["resource_id"],
            "feedback": "dislike"})
        assert answer.status_code == 200 and answer.json()["status"] == "created", answer.text
    wait_until_equal(lambda: aggregator_stats(stack)["feedback"], collector_feedback(stack), 60, "the counts")


def in_progress(stack: LocalStack, service: str, client: httpx.Client) -> float:
    """Requests being handled, less the /metrics request asking.

    `client` is connected before the burst: a new one costs ~20 ms of CPU and its connection
    is accepted behind the burst's, while a fast server answers a good part of it."""
    return metric(stack, service, f'eduranker_http_requests_in_progress{{service="{service}"}}', client) - 1


def burst(url: str, payloads: list[dict], server: subprocess.Popen
          ) -> tuple[list[threading.Thread], list[httpx.Response | str]]:
    """Every request written to the server's socket while it is stopped, then the server resumed.

    Sent from this process's threads, requests reach the server only as fast as the GIL lets
    them go, and a fast server answers each before the next comes: CI once saw fewer than 8 in
    flight out of 40. Held in the kernel's buffers, they all arrive at once.
    """
    answers: list[httpx.Response | str] = []
    written = threading.Semaphore(0)

    def send(payload: dict) -> None:
        counted = threading.Event()

        def count() -> None:
            if not counted.is_set():
                counted.set()
                written.release()

        def trace(event: str, info: dict) -> None:
            if event.startswith("http11.send_request_body."):  # .complete or .failed
                count()

        try:
            with httpx.Client(timeout=60) as client:
                answers.append(client.post(url, json=payload, extensions={"trace": trace}))
        except httpx.HTTPError as exc:
            answers.append(f"{type(exc).__name__}: {exc}")
        finally:
            count()  # failed before writing: counted all the same, or the wait would hang

    threads = [threading.Thread(target=send, args=(p,), daemon=True) for p in payloads]
    server.send_signal(signal.SIGSTOP)
    try:
        for thread in threads:
            thread.start()
        for _ in payloads:
            assert written.acquire(timeout=60), "a request could not be written to the stopped server"
    finally:
        server.send_signal(signal.SIGCONT)
    return threads, answers


def terminate(stack: LocalStack, service: str, threads: list[threading.Thread]) -> bool:
    """SIGTERM, every client answered; True when the process stopped by itself, not killed.

    Uvicorn raises the signal again once it has shut down cleanly, so the exit is 0 or -SIGTERM."""
    process = stack.processes.pop(service)
    process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    return process.wait(timeout=60) in (0, -signal.SIGTERM)


def test_sigterm_finishes_requests_drains_logs_and_keeps_the_outbox(stack: LocalStack) -> None:
    assert stack.broker is not None and stack.broker.process is not None
    collector, reranker = stack.url("collector"), stack.url("reranker")

    # Reranker: a burst of searches in flight when SIGTERM comes; every one answered and logged.
    logged = read_store(stack, "inferences")
    assert isinstance(logged, int)
    with httpx.Client(timeout=30) as poll:
        in_progress(stack, "reranker", poll)  # connected before the burst: no accept behind 80 others
        threads, answers = burst(reranker + SEARCH, [{"query_text": q, "candidates": 200, "top_k": 50}
                                                     for q in QUERIES * 4], stack.processes["reranker"])
        wait_for(lambda: in_progress(stack, "reranker", poll) >= 8, 30, 0.01, "searches in flight")
    assert terminate(stack, "reranker", threads)
    # Requests being handled finish; one that had not reached a handler yet may find the
    # server closing (no answer at all: refused, closed or reset; the client retries),
    # never an error answer.
    answered = [a for a in answers if isinstance(a, httpx.Response)]
    assert len(answered) >= 8 and all(a.status_code == 200 for a in answered), answers
    refused = [a for a in answers if isinstance(a, str)]
    assert all(a.startswith(("ConnectError", "RemoteProtocolError", "ReadError")) for a in refused), refused
    assert read_store(stack, "inferences") == logged + len(answered), "the inference log was drained"
    stack.start_service("reranker")
    stack.wait_ready("reranker", timeout_s=120)

    # Collector, broker paused: feedback accepted into the outbox, slow requests in flight at SIGTERM.
    searches = [httpx.post(reranker + SEARCH, json={"query_text": q}, timeout=30).json() for q in QUERIES[:4]]
    stack.broker.process.send_signal(signal.SIGSTOP)
    try:
        for found in searches:
            answer = httpx.post(collector + "/api/feedback", timeout=30, json={
                "inference_id": found["inference_id"], "resource_id": found["results"][1]["resource_id"],
                "feedback": "like"})
            assert answer.status_code == 200, answer.text
        # An inference not logged (yet): the collector looks again for ~2 s before its 404.
        with httpx.Client(timeout=30) as poll:
            in_progress(stack, "collector", poll)
            unknown = [{"inference_id": f"not-logged-{n}", "resource_id": "r", "feedback": "like"}
                       for n in range(4)]
            threads, answers = burst(collector + "/api/feedback", unknown, stack.processes["collector"])
            wait_for(lambda: in_progress(stack, "collector", poll) >= 4, 30, 0.02, "slow feedback in flight")
        assert terminate(stack, "collector", threads)
        assert [a.status_code if isinstance(a, httpx.Response) else a for a in answers] == [404] * 4
        left = read_store(stack, "outbox")
        assert isinstance(left, int) and left >= len(searches), "left pending for the next start"
    finally:
        stack.broker.process.send_signal(signal.SIGCONT)
    stack.start_service("collector")
    stack.wait_ready("collector", timeout_s=60)
    wait_for(lambda: pending_outbox(stack) == 0, 60, 0.3, "the pending events published at the next start")
    expected = collector_feedback(stack)
    wait_until_equal(lambda: aggregator_stats(stack)["feedback"], expected, 90, "the counts")

    # Aggregator: a clean stop commits its offsets, so nothing is delivered twice after the restart.
    before = aggregator_stats(stack)
    assert terminate(stack, "aggregator", [])
    stack.start_service("aggregator")
    stack.wait_ready("aggregator", timeout_s=120)
    wait_until_equal(lambda: aggregator_stats(stack)["feedback"], expected, 60, "the counts after a restart")
    assert aggregator_stats(stack)["origin"] == before["origin"]
    assert metric(stack, "aggregator", "eduranker_aggregator_duplicate_events_total") == 0


def test_loadtest_reports_every_figure(stack: LocalStack, tmp_path: Path) -> None:
    """`make loadtest`'s script for a few seconds against this stack (its own start is `make run`'s)."""
    output = tmp_path / "loadtest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadtest", "--duration", "3", "--clients", "2",
         "--reranker", stack.url("reranker"), "--collector", stack.url("collector"), "--output", str(output)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(output.read_text())
    assert result["errors"] == 0 and result["model_versions"]
    for endpoint in ("search", "feedback"):
        figures = result["endpoints"][endpoint]
        assert set(figures) == {"requests", "throughput_rps", "p50_ms", "p95_ms", "p99_ms", "errors"}
        assert figures["requests"] > 0 and figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    assert set(result["memory_mb"]) == {"reranker", "collector"}
    assert all(set(m) == {"rss_start", "rss_end", "growth"} for m in result["memory_mb"].values())


def test_broker_killed_mid_traffic_searches_go_on_and_feedback_is_counted_once(stack: LocalStack) -> None:
    """Then the aggregator is killed and restarted on the restarted broker, which reports the
    changelog's old offsets but serves none of its records: the worker drops that changelog and
    rebuilds its counts from the store instead of waiting for them forever."""
    assert stack.broker is not None and stack.broker.process is not None
    with Traffic(stack) as traffic:
        traffic.wait_progress(10)
        traffic.phase = "broker-down"
        stack.broker.process.kill()  # SIGKILL: memory storage, so it comes back empty
        stack.broker.process.wait()
        traffic.wait_progress(20)
        assert pending_outbox(stack) > 0, "accepted while the broker is down: waiting in the outbox"
        stack.broker.start()
        traffic.phase = "broker-back"
        traffic.wait_progress(20)
    for phase in ("start", "broker-down", "broker-back"):
        assert traffic.search_outcomes(phase) == {"200"}, (phase, traffic.searches)
    assert not traffic.refused, traffic.refused[:3]
    assert_nothing_lost_and_counted_once(stack, traffic)

    stack.stop_service("aggregator", sig=signal.SIGKILL)
    stack.start_service("aggregator")
    stack.wait_ready("aggregator", timeout_s=120)
    wait_until_equal(lambda: aggregator_stats(stack)["feedback"], collector_feedback(stack), 60,
                     "the counts after a restart on the restarted broker")
