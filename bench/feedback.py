"""Benchmark: sustained feedback ingestion over HTTP, and the delay until the aggregator counts it.

Starts the embedded broker, the collector and the aggregator as real processes on free ports
(`LocalStack`), logs inferences straight into the store, then sends feedback as fast as
`--concurrency` clients allow (httpx AsyncClient), first one request per feedback, then in
batches of `--batch` through `/api/feedback/batch` from `--batch-clients` clients, while
polling the aggregator's `/stats`. The k-th feedback accepted is counted when the aggregator's
total first reaches k, which gives the delay from acceptance (the HTTP answer) to the count.
Each phase also reports the CPU time every process spent per feedback, from its first request
until the aggregator counted its last feedback, and the load average around it (the figures
depend on what else runs). At the end every accepted feedback must be in the store and in the
counts: `lost` says how many are not. `aims` says whether the batch path met its aims.

    .venv/bin/python -m bench.feedback            # writes bench/results/feedback.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.harness.measures import nearest_rank
from bench.harness.results import RESULTS, load_average, machine, write_json
from shared.records import Inference, ShownResult
from shared.store import open_store
from tools.client import FEEDBACK, FEEDBACK_BATCH, feedback_body
from tools.localstack import LocalStack

SHOWN = 10
AIMS = {"batch_feedback_per_s": 5000.0, "batch_count_delay_p95_s": 1.0, "single_count_delay_p95_s": 0.15}


async def log_inferences(store_url: str, count: int) -> None:
    store = await open_store(store_url)
    try:
        for start in range(0, count, 500):
            await store.add_inferences([
                Inference(inference_id=f"bench-{i}", query=f"query {i}", model_version=f"v{i % 3}",
                          use_reranker=True, latency_ms=1.0,
                          results=[ShownResult(resource_id=f"res-{r}", rank=r + 1, first_stage_score=1.0)
                                   for r in range(SHOWN)])
                for i in range(start, min(count, start + 500))
            ])
    finally:
        await store.close()


async def read_back(store_url: str) -> tuple[set[str], list[float]]:
    """Feedback ids in the store, and each event's delay from its creation to its publication."""
    store = await open_store(store_url)
    try:
        ids = {f.feedback_id for f in await store.list_feedback(include_test=True)}
        start = datetime(2000, 1, 1, tzinfo=UTC)
        events = await store.published_events(start, datetime.now(UTC), limit=10**7)
        return ids, [(e.published_at - e.created_at).total_seconds() for e in events if e.published_at]
    finally:
        await store.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux `/proc`), to compare runs on a busy machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float | None:
    found = nearest_rank(values, q)
    return None if found is None else round(found, 4)


def feedback(i: int) -> dict:
    return feedback_body(f"bench-{i // SHOWN}", f"res-{i % SHOWN}", "like" if i % 3 else "dislike",
                         user_id="bench")


@dataclass
class Phase:
    """One way of sending: what was accepted, when, and what the services spent on it."""

    name: str
    accepted_at: list[float] = field(default_factory=list)
    feedback_ids: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    counted_s: float = 0.0
    cpu_ms: dict[str, float] = field(default_factory=dict)
    load_average: dict[str, list[float]] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


async def send(stack: LocalStack, phase: Phase, items: range, concurrency: int, batch: int) -> None:
    url = stack.url("collector") + (FEEDBACK_BATCH if batch > 1 else FEEDBACK)
    chunks = asyncio.Queue[list[int]]()
    for start in range(items.start, items.stop, batch):
        chunks.put_nowait(list(range(start, min(items.stop, start + batch))))

    async def sender(client: httpx.AsyncClient) -> None:
        while not chunks.empty():
            chunk = chunks.get_nowait()
            body = {"items": [feedback(i) for i in chunk]} if batch > 1 else feedback(chunk[0])
            try:
                response = await client.post(url, json=body)
            except httpx.HTTPError as exc:
                phase.fail(type(exc).__name__)
                continue
            if response.status_code != 200:
                phase.fail(str(response.status_code))
                continue
            now = time.perf_counter()
            answers = response.json()["results"] if batch > 1 else [{"ok": True, "result": response.json()}]
            for answer in answers:
                if answer["ok"]:
                    phase.accepted_at.append(now)
                    phase.feedback_ids.append(answer["result"]["feedback_id"])
                else:
                    phase.fail(str(answer["status_code"]))

    # One AsyncClient (one connection) per sender: a shared pool costs the client 3-4x more CPU
    # per request at 32 in flight, and this machine's cores are shared with the services.
    one = httpx.Limits(max_connections=1)
    clients = [httpx.AsyncClient(timeout=60, limits=one) for _ in range(concurrency)]
    started = time.perf_counter()
    try:
        await asyncio.gather(*(sender(client) for client in clients))
    finally:
        phase.elapsed_s = time.perf_counter() - started
        for client in clients:
            await client.aclose()


def process_ids(stack: LocalStack) -> dict[str, int]:
    pids = {"collector": stack.processes["collector"].pid, "aggregator": stack.processes["aggregator"].pid,
            "bench_client": os.getpid()}
    if stack.broker is not None and stack.broker.process is not None:
        pids["broker"] = stack.broker.process.pid
    return pids


async def run_phase(stack: LocalStack, counter: Counter, phase: Phase, items: range, concurrency: int,
                    batch: int, counted_before: int) -> None:
    """Sends, then waits until the aggregator counted all; CPU and load from the first request to then."""
    pids = process_ids(stack)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    phase.load_average["start"] = load_average()
    started = time.perf_counter()
    await send(stack, phase, items, concurrency, batch)
    await counter.reach(counted_before + len(phase.accepted_at), timeout_s=120)
    phase.counted_s = time.perf_counter() - started
    phase.load_average["end"] = load_average()
    for name, pid in pids.items():
        after = cpu_seconds(pid)
        if before[name] is not None and after is not None and phase.accepted_at:
            phase.cpu_ms[name] = round((after - before[name]) * 1000 / len(phase.accepted_at), 3)  # type: ignore[operator]


class Counter:
    """Polls the aggregator's total; the k-th feedback accepted is counted when the total reaches k."""

    def __init__(self, stack: LocalStack, interval_s: float) -> None:
        self.url, self.interval_s = stack.url("aggregator") + "/stats", interval_s
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    total = (await client.get(self.url)).json()["counts"]["total"]
                    self.samples.append((time.perf_counter(), total))
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def reach(self, total: int, timeout_s: float) -> bool:
        deadline = time.perf_counter() + timeout_s
        while not self.samples or self.samples[-1][1] < total:
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(self.interval_s)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def delays(self, accepted_at: list[float], base: int) -> list[float]:
        delays, j = [], 0
        for k, t_accept in enumerate(sorted(accepted_at), start=base + 1):
            while j < len(self.samples) and self.samples[j][1] < k:
                j += 1
            if j < len(self.samples):
                delays.append(max(0.0, self.samples[j][0] - t_accept))
        return delays


def report(phase: Phase, delays: list[float], concurrency: int, batch: int) -> dict:
    return {
        "accepted": len(phase.accepted_at),
        "failures": phase.failures,
        "concurrency": concurrency,
        "batch": batch,
        "elapsed_s": round(phase.elapsed_s, 3),
        "feedback_per_s": round(len(phase.accepted_at) / phase.elapsed_s, 1) if phase.elapsed_s else 0.0,
        "all_counted_after_s": round(phase.counted_s, 3),
        "count_delay_p50_s": percentile(delays, 0.5),
        "count_delay_p95_s": percentile(delays, 0.95),
        "count_delay_max_s": round(max(delays), 4) if delays else None,
        "count_delay_mean_s": round(statistics.fmean(delays), 4) if delays else None,
        # From the first request until the aggregator counted the last feedback, per process.
        "cpu_ms_per_feedback": phase.cpu_ms,
        "load_average": phase.load_average,
    }


def aims(single: dict, batched: dict) -> dict:
    """Each aim with the figure measured and whether it is met."""
    measured = {"batch_feedback_per_s": batched["feedback_per_s"],
                "batch_count_delay_p95_s": batched["count_delay_p95_s"],
                "single_count_delay_p95_s": single["count_delay_p95_s"]}
    return {name: {"aim": aim, "measured": measured[name],
                   "met": measured[name] is not None and (measured[name] >= aim if name.endswith("_per_s")
                                                          else measured[name] <= aim)}
            for name, aim in AIMS.items()}


async def bench(stack: LocalStack, count: int, batch_count: int, concurrency: int, batch_clients: int,
                batch: int, poll_s: float) -> dict:
    counter = Counter(stack, poll_s)
    counter.start()
    try:
        single, batched = Phase("single"), Phase("batch")
        await run_phase(stack, counter, single, range(count), concurrency, 1, 0)
        await run_phase(stack, counter, batched, range(count, count + batch_count), batch_clients, batch,
                        len(single.accepted_at))
    finally:
        await counter.stop()
    total = len(single.accepted_at) + len(batched.accepted_at)
    in_store, publish_delays = await read_back(stack.settings.store_url)
    counted = counter.samples[-1][1] if counter.samples else 0
    missing_store = len(set(single.feedback_ids + batched.feedback_ids) - in_store)
    result = report(single, counter.delays(single.accepted_at, 0), concurrency, 1)
    batch_result = report(batched, counter.delays(batched.accepted_at, len(single.accepted_at)),
                          batch_clients, batch)
    return {
        **result,
        "batch_endpoint": batch_result,
        "aims": aims(result, batch_result),
        "publish_delay_p50_s": percentile(publish_delays, 0.5),
        "publish_delay_p95_s": percentile(publish_delays, 0.95),
        "poll_interval_s": poll_s,
        "accepted_total": total,
        "aggregator_total": counted,
        "missing_from_store": missing_store,
        "missing_from_counts": max(0, total - counted),
        "lost": missing_store + max(0, total - counted),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=15000, help="feedback sent one request each")
    parser.add_argument("--batch-count", type=int, default=15000, help="feedback sent in batches")
    parser.add_argument("--batch", type=int, default=100, help="items per batch request")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending one request each")
    parser.add_argument("--batch-clients", type=int, default=4, help="clients sending batches")
    parser.add_argument("--poll", type=float, default=0.02, help="aggregator /stats poll interval (s)")
    parser.add_argument("--output", type=Path, default=RESULTS / "feedback.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as tmp:
        env = {"EDURANKER_TRAIN_MIN_NEW_FEEDBACK": str(10**9)}  # counting only: no training
        with LocalStack(Path(tmp), env=env) as stack:
            stack.start_broker()
            inferences = (args.count + args.batch_count) // SHOWN + 1
            asyncio.run(log_inferences(stack.settings.store_url, inferences))
            stack.start(services=("collector", "aggregator"))
            result = asyncio.run(bench(stack, args.count, args.batch_count, args.concurrency,
                                       args.batch_clients, args.batch, args.poll))
    result["machine"] = machine() | {"load_average": load_average()}
    write_json(args.output, result)
    print(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
