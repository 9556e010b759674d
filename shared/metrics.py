"""Every Prometheus metric EduRanker exports, declared once, plus the HTTP middleware.

Names follow Prometheus conventions: `eduranker_` prefix, base units, `_total` counters,
labels with bounded values. Each service exposes the default registry on `/metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# HTTP (all FastAPI services)
HTTP_REQUESTS = Counter(
    "eduranker_http_requests_total", "HTTP requests", ["service", "route", "method", "status"]
)
HTTP_IN_PROGRESS = Gauge(
    "eduranker_http_requests_in_progress", "HTTP requests being handled (a graceful stop waits for them)",
    ["service"],
)
HTTP_DURATION = Histogram(
    "eduranker_http_request_duration_seconds", "HTTP request duration",
    ["service", "route", "method"], buckets=LATENCY_BUCKETS,
)

# Reranker
RERANK_DURATION = Histogram(
    "eduranker_rerank_duration_seconds", "Time to score the candidates of one request",
    buckets=LATENCY_BUCKETS,
)
RERANK_CANDIDATES = Histogram(
    "eduranker_rerank_candidates", "Candidates scored per request",
    buckets=(1, 5, 10, 20, 50, 100, 200),
)
CROSS_CACHE_LOOKUPS = Counter(
    "eduranker_cross_cache_lookups_total",
    "Cross-encoder scores looked up in the served version's score cache", ["outcome"],
)
CROSS_CACHE_ENTRIES = Gauge("eduranker_cross_cache_entries", "Scores held by the last cache written")
SERVED_MODEL = Info("eduranker_served_model", "The model version being served")
SERVED_MODEL_VERSION = Gauge(
    "eduranker_served_model_version_number", "Numeric part of the served version (0 = version 0)"
)
MODEL_RELOADS = Counter("eduranker_model_reloads_total", "Model reload attempts", ["outcome"])
EXPERIMENT_IMPRESSIONS = Counter(
    "eduranker_experiment_impressions_total", "Searches answered with an interleaved list", ["kind"]
)
EMBEDDING_RESOURCES = Gauge(
    "eduranker_embedding_resources",
    "Resources of the index this process built last: all of them, and those with a vector", ["state"],
)
EMBEDDING_TEXTS = Counter(
    "eduranker_embedding_texts_total",
    "Resource texts given a vector: run through the embedding model here, or read back from the store",
    ["source"],
)
INFERENCES_LOGGED = Counter("eduranker_inferences_logged_total", "Inferences written to the store")
INFERENCE_LOG_BACKLOG = Gauge("eduranker_inference_log_backlog", "Inferences waiting to be written")

# Collector
FEEDBACK = Counter("eduranker_feedback_total", "Feedback received", ["label", "outcome"])
EXPLORED_SEARCHES = Counter(
    "eduranker_explored_searches_total",
    "Searches outside experiments that swapped two neighbours (the click model's share)")
CLICK_EXAMINATION = Gauge(
    "eduranker_click_examination",
    "Chance a result is examined at each rank, relative to rank 1, as the served version's run estimated "
    "it (bound: estimate, or the 95 % interval's low and high)", ["rank", "bound"])
INTERACTIONS = Counter("eduranker_interactions_total",
                       "Opens of shown results (open) and their dwell reports (return) received",
                       ["kind", "outcome"])
OUTBOX_BACKLOG = Gauge("eduranker_outbox_backlog", "Feedback events not yet published")
OUTBOX_OLDEST_AGE = Gauge(
    "eduranker_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished event"
)
OUTBOX_PUBLISHED = Counter("eduranker_outbox_published_total", "Events published by the outbox relay")
PUBLISH_FAILURES = Counter("eduranker_publish_failures_total", "Failed publish attempts")

# Aggregator
AGG_FEEDBACK = Gauge("eduranker_aggregator_feedback", "Feedback counted, by label", ["label"])
AGG_SINCE_TRAINING = Gauge(
    "eduranker_aggregator_feedback_since_training", "Feedback counted since the last training"
)
AGG_BALANCE = Gauge("eduranker_aggregator_like_ratio", "Share of likes among counted feedback")
AGG_TRAINING_REQUESTS = Counter(
    "eduranker_training_requests_total", "Training requests sent", ["reason"]
)
AGG_DUPLICATES = Counter("eduranker_aggregator_duplicate_events_total", "Events de-duplicated")
AGG_BY_VERSION = Gauge(
    "eduranker_aggregator_feedback_by_model_version", "Feedback counted, by the model version that ranked it",
    ["model_version", "label"],
)
AGG_COUNT_DELAY = Histogram(
    "eduranker_aggregator_count_delay_seconds", "From a feedback's acceptance to its count",
    buckets=LATENCY_BUCKETS,
)
AGG_DEDUP_ENTRIES = Gauge("eduranker_aggregator_dedup_entries", "Event ids kept to drop redeliveries")
AGG_RECOVERED = Counter(
    "eduranker_aggregator_recovered_events_total", "Published events the broker lost, counted from the store"
)
AGG_REBUILDS = Counter("eduranker_aggregator_rebuilds_total", "Counts rebuilt from the store", ["reason"])
DEADLETTER = Counter("eduranker_deadletter_total", "Malformed messages set aside", ["topic"])
EXPERIMENT_RUNNING = Gauge("eduranker_experiment_running", "1 while an online experiment of this kind runs",
                           ["kind"])
EXPERIMENT_IMPRESSIONS_LOGGED = Gauge(
    "eduranker_experiment_logged_impressions", "Interleaved searches logged for the running experiment"
)
EXPERIMENT_OUTCOMES = Gauge(
    "eduranker_experiment_outcomes", "Rated impressions of the running experiment, by winner", ["outcome"]
)
EXPERIMENT_P_VALUE = Gauge("eduranker_experiment_p_value", "Always-valid p-value of the running experiment")
EXPERIMENT_DECISIONS = Counter("eduranker_experiment_decisions_total", "Experiments users decided",
                               ["decision"])

# Trainer
TRAINING_RUNS = Counter("eduranker_training_runs_total", "Training runs", ["outcome"])
TRAINING_DURATION = Histogram(
    "eduranker_training_duration_seconds", "Training run duration",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
TRAINING_PAIRS = Gauge("eduranker_training_pairs", "Pairs used by the last training run")
TRAINING_METRIC = Gauge(
    "eduranker_training_metric", "Validation metrics of the last run", ["model", "metric"]
)
ROLLBACKS = Counter("eduranker_model_rollbacks_total", "Champion rollbacks", ["trigger"])

# The label values the alerts and panels count, exported at 0 from a process's start: increase()
# over a series that first appears at 1 sees no increase, so a process's first failure would not
# alert, and a panel would have no data until the first interleaved search.
ALERTED_LABEL_VALUES: dict[Counter, tuple[str, ...]] = {
    MODEL_RELOADS: ("success", "failed"),
    TRAINING_RUNS: ("promoted", "challenger", "rejected", "skipped", "failed"),
    ROLLBACKS: ("automatic", "operator"),
    EXPERIMENT_DECISIONS: ("promote", "retire", "rollback", "keep"),
    EXPERIMENT_IMPRESSIONS: ("challenge", "watch"),
    EMBEDDING_TEXTS: ("model", "store"),
    CROSS_CACHE_LOOKUPS: ("hit", "miss"),
}
for _counter, _values in ALERTED_LABEL_VALUES.items():
    for _value in _values:
        _counter.labels(_value)


class HTTPMetrics:
    """Plain ASGI middleware: `@app.middleware("http")` would cost every request a task and a
    wrapped body stream, a tenth of the collector's CPU per feedback when measured."""

    def __init__(self, app: Callable[..., Awaitable[None]], service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Callable[..., Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_progress = HTTP_IN_PROGRESS.labels(self.service)
        in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            in_progress.dec()
            template = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(self.service, template, scope["method"], str(status)).inc()
            HTTP_DURATION.labels(self.service, template, scope["method"]).observe(time.perf_counter() - start)


def instrument(app: FastAPI, service: str) -> None:
    """Adds HTTP metrics and `/metrics`; routes are labelled by template, never by raw path."""

    app.add_middleware(HTTPMetrics, service=service)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
