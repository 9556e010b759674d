"""A Prometheus beside the local stack, with the shipped scrape jobs and alert rules.

`make monitor` and the monitoring test use it. The config is deploy/prometheus/prometheus.yml
with each job's target moved to a loopback port: jobs, labels and rules stay those that
docker-compose and Kubernetes run, so what works here works there.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from shared.messaging.broker import die_with_parent, free_port, terminate

log = logging.getLogger(__name__)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
CONFIG = DEPLOY / "prometheus.yml"
SELF_JOB = "prometheus"


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its HTTP API refused a request."""


def local_config(ports: Mapping[str, int], own_port: int, interval_s: float | None = None) -> dict[str, Any]:
    """The shipped config, each job scraping 127.0.0.1 on the port `ports` gives its service.

    `interval_s` overrides both the scrape and the evaluation interval (a test cannot wait 15 s
    a scrape). A job the stack has no port for is an error, not a target left unreachable.
    """
    config = yaml.safe_load(CONFIG.read_text())
    for job in config["scrape_configs"]:
        name = job["job_name"]
        port = own_port if name == SELF_JOB else ports.get(name)
        if port is None:
            raise ValueError(f"{CONFIG} scrapes job {name!r}, which the local stack does not run")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    config["rule_files"] = [str((CONFIG.parent / path).resolve()) for path in config["rule_files"]]
    if interval_s is not None:
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = f"{interval_s:g}s"
    return config


@dataclass
class LocalPrometheus:
    """One Prometheus process on a loopback port, its config and data under `workdir`."""

    workdir: Path
    ports: Mapping[str, int]
    port: int = 0
    interval_s: float | None = None
    binary: str = "prometheus"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self, timeout_s: float = 60.0) -> LocalPrometheus:
        """Returns once `/-/ready` answers, that is once the config and rules are loaded."""
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(local_config(self.ports, self.port, self.interval_s)))
        out = open(self.log_path, "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            # Out of the terminal's process group, as the broker: Ctrl-C reaches the launcher,
            # which stops Prometheus itself.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                logged = self.log_path.read_text(errors="replace").strip().splitlines()
                raise PrometheusError(f"prometheus exited with code {self.process.returncode}: "
                                      f"{logged[-1] if logged else ''} (see {self.log_path})")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    log.info("event=prometheus_started url=%s pid=%s", self.url, self.process.pid)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready on {self.url} within {timeout_s}s")

    def api(self, path: str, **params: str) -> Any:
        """`data` of a Prometheus HTTP API answer (`/api/v1/<path>`)."""
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        if answer.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def stop(self, timeout_s: float = 30.0) -> None:
        if terminate(self.process, timeout_s):
            log.info("event=prometheus_stopped url=%s", self.url)

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
