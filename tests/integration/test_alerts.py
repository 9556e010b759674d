"""The alert rules evaluated by Prometheus' own `promtool`, on input series.

deploy/prometheus/alerts_test.yml holds the cases (`promtool test rules`, as Prometheus
documents it). Here: promtool checks the shipped files and runs the cases, and the cases are
shown to catch a broken alert: every alert has a case where it fires and one where it stays
silent, and the cases fail when an alert is made to never, or to always, fire.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from tests.debian import debian_program
from tests.integration.test_deploy import ALERTS, PROMETHEUS, alert_rules, load_yaml
from tools.localstack import SERVICES
from tools.prometheus import local_config

ALERTS_TEST = ALERTS.parent / "alerts_test.yml"
BROKEN = {
    "never": {"expr": "vector(1) > 2", "for": "0m"},
    "always": {"expr": "vector(1)", "for": "0m"},
}


@pytest.fixture(scope="session")
def promtool() -> str:
    return debian_program("prometheus", "promtool")


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=120,
                          check=False)


def cases() -> list[dict[str, Any]]:
    return [case for test in load_yaml(ALERTS_TEST)["tests"] for case in test["alert_rule_test"]]


def failed_cases(output: str) -> list[tuple[str, bool, bool]]:
    """(alert, expected none, got none) for each case promtool reports as failed."""
    blocks = re.split(r"\n\s*alertname: ", output)[1:]
    return [(block.split(",", 1)[0], "exp:[]" in block.split("got:", 1)[0], "got:[]" in block)
            for block in blocks]


def test_the_shipped_config_and_rules_pass_promtool_checks(promtool: str) -> None:
    checked = run_promtool(promtool, "check", "config", PROMETHEUS)  # and the rule files it names
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout
    rules = run_promtool(promtool, "check", "rules", ALERTS)
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_the_local_stacks_config_passes_promtool_check(promtool: str, tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(local_config(dict.fromkeys(SERVICES, 8000), 9090, interval_s=1)))
    checked = run_promtool(promtool, "check", "config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_when_it_should_and_stays_silent_otherwise(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    tested = {case["alertname"] for case in cases()}
    assert tested <= names, f"cases for alerts that do not exist: {sorted(tested - names)}"
    firing = {case["alertname"] for case in cases() if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases() if not case.get("exp_alerts")}
    assert names <= firing, f"never shown firing: {sorted(names - firing)}"
    assert names <= silent, f"never shown silent: {sorted(names - silent)}"


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_the_cases_catch_every_alert_broken(promtool: str, tmp_path: Path, broken: str) -> None:
    """Every alert at once made to never (always) fire: each one's firing (silent) cases fail.

    Cases evaluate one alert each, so breaking all of them in one run shows what breaking each
    alone would, in one promtool run.
    """
    alerts = load_yaml(ALERTS)
    for group in alerts["groups"]:
        for rule in group["rules"]:
            rule.update(BROKEN[broken])
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(alerts, sort_keys=False))
    (tmp_path / ALERTS_TEST.name).write_text(ALERTS_TEST.read_text())
    result = run_promtool(promtool, "test", "rules", tmp_path / ALERTS_TEST.name)
    output = result.stdout + result.stderr  # the failures go to stderr
    assert result.returncode != 0, output
    failed = failed_cases(output)
    if broken == "never":
        caught = {alert for alert, expected_none, got_none in failed if got_none and not expected_none}
    else:
        caught = {alert for alert, expected_none, got_none in failed if expected_none and not got_none}
    assert caught == {rule["alert"] for rule in alert_rules()}, output[-3000:]


def matches(labels: dict[str, str], matchers: Any) -> bool:
    """PromQL label matching: regexes are anchored, a missing label is the empty string."""
    import promql_parser as promql

    for matcher in matchers.matchers:
        value = labels.get(matcher.name, "")
        if matcher.op == promql.MatchOp.Equal:
            ok = value == matcher.value
        elif matcher.op == promql.MatchOp.NotEqual:
            ok = value != matcher.value
        else:
            ok = bool(re.fullmatch(matcher.value, value)) == (matcher.op == promql.MatchOp.Re)
        if not ok:
            return False
    return True


def counter_selectors(expr: str) -> list[Any]:
    promql = pytest.importorskip("promql_parser", reason="promql-parser is not installed")
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql.VectorSelector) and node.name.endswith("_total"):
            found.append(node)

    promql.walk(promql.parse(expr), visit)
    return found


def test_counters_the_alerts_count_are_exported_from_the_start() -> None:
    """A counter series that first appears at 1 shows no increase(): a process's first reload
    failure, failed run or rollback would never alert. A fresh process must export each counter
    an alert selects, with label values its matchers accept, at 0."""
    fresh = subprocess.run(
        [sys.executable, "-c", "import shared.metrics, prometheus_client as p; "
                               "print(p.generate_latest().decode())"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    samples = [s for family in text_string_to_metric_families(fresh) for s in family.samples]
    for rule in alert_rules():
        for selector in counter_selectors(rule["expr"]):
            found = [s for s in samples if s.name == selector.name and matches(s.labels, selector.matchers)]
            assert found, f"{rule['alert']}: a fresh process exports no {selector.prettify()}"
            assert all(s.value == 0 for s in found), found
