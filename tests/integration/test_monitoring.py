"""A real Prometheus scrapes the running stack: the dashboard shows the loop, and no alert is active.

Prometheus (Debian's package, installed or skipped) runs deploy/prometheus's jobs and alert
rules, the targets moved to the stack's loopback ports, scraping and evaluating every second.
After a search, feedback and a training round, every panel query of the Grafana dashboard is
asked of Prometheus' HTTP API as Grafana would ask it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import tiny_stack
from tests.debian import debian_program
from tests.integration.test_deploy import DASHBOARD, alert_rules, dashboard_exprs, grafana_to_promql
from tests.integration.test_loop import QUERIES, rate_top_results, search
from tools.localstack import SERVICES, LocalStack, wait_for
from tools.prometheus import SELF_JOB, LocalPrometheus

THRESHOLD = 40
INTERVAL_S = 1


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LocalStack]:
    # Any candidate gets through, promoted offline: the gate is the trainer tests' business, the
    # experiment users decide the online test's.
    with tiny_stack(tmp_path_factory.mktemp("monitoring"), tiny_model, promotion="offline",
                    train_min_new_feedback=THRESHOLD, gate_margin=1.0, gate_min_prior_auc=0.0,
                    num_epochs=1) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    binary = debian_program("prometheus", "prometheus")
    with LocalPrometheus(tmp_path_factory.mktemp("prometheus"), stack.ports, interval_s=INTERVAL_S,
                         binary=binary) as running:
        yield running


def values(prometheus: LocalPrometheus, expr: str) -> list[float]:
    """The values of an instant query, now (a scalar or each series of a vector)."""
    data = prometheus.api("query", query=expr)
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    return [float(series["value"][1]) for series in data["result"]]


def scraped_after_training(prometheus: LocalPrometheus) -> bool:
    return bool(values(prometheus, 'eduranker_training_runs_total{outcome="promoted"} > 0')
                and values(prometheus, 'eduranker_served_model_version_number{job="reranker"} >= 1'))


def evaluated_since(prometheus: LocalPrometheus, moment: datetime) -> list[dict[str, Any]] | None:
    """Every rule, once each group has been evaluated after `moment`; None before."""
    groups = prometheus.api("rules", type="alert")["groups"]
    if not groups or any(datetime.fromisoformat(g["lastEvaluation"]) <= moment for g in groups):
        return None
    return [rule for group in groups for rule in group["rules"]]


def test_every_panel_has_data_and_no_alert_is_active(stack: LocalStack, prometheus: LocalPrometheus) -> None:
    began = time.monotonic()
    jobs = {*SERVICES, SELF_JOB}

    def targets_up() -> bool:
        active = prometheus.api("targets", state="active")["activeTargets"]
        return {t["labels"]["job"] for t in active if t["health"] == "up"} == jobs

    wait_for(targets_up, 30, 0.5, "Prometheus scraping the four services and itself")

    assert search(stack, "machine learning tutorial")["model_version"] == "v0"
    assert rate_top_results(stack) > THRESHOLD

    def served() -> str:
        return httpx.get(f"{stack.url('reranker')}/api/reranking/info-modele", timeout=10).json()["version"]

    wait_for(lambda: served() != "v0", 240, what="a new model version in info-modele")
    assert served() == "v0001"
    assert search(stack, "linear algebra for beginners")["model_version"] == "v0001"
    wait_for(lambda: scraped_after_training(prometheus), 30, 0.5, "the promoted run and v0001 scraped")
    searches = 'sum(eduranker_http_requests_total{service="reranker", route=~"/api/reranking/search.*"})'
    wait_for(lambda: values(prometheus, searches) == [2 * len(QUERIES) + 2], 30, 0.5, "every search scraped")

    # Grafana's intervals as if the dashboard showed the test's time range, its threshold the stack's.
    window = f"{math.ceil(time.monotonic() - began) + 5}s"
    empty = []
    for expr in dashboard_exprs(json.loads(DASHBOARD.read_text())):
        promql = grafana_to_promql(expr, window=window, value=str(THRESHOLD))
        if not any(math.isfinite(v) for v in values(prometheus, promql)):
            empty.append(promql)
    assert not empty, f"panel queries with no data: {empty}"

    seen = datetime.now(UTC)
    rules = wait_for(lambda: evaluated_since(prometheus, seen), 30, 0.5, "the alert rules evaluated again")
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not unhealthy, unhealthy
    active = {rule["name"]: [a["labels"] for a in rule["alerts"]]
              for rule in rules if rule["state"] != "inactive"}
    assert not active, f"alerts pending or firing on a healthy stack: {active}"
