"""`make run`'s launcher: a start that logs no error, Ctrl-C stops every part by itself, the broker
last; `--monitor` adds Prometheus."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from shared.messaging.broker import free_port
from shared.store import open_store
from tests.conftest import ROOT, tiny_env
from tests.debian import debian_program
from tests.mongodb import database_url
from tools.localstack import PORT_FIELDS, SERVICES, LocalStack, wait_for


@contextmanager
def launched(workdir: Path, tiny_model: Path, *args: str,
             **settings: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`python -m tools.cli run ARGS` on free ports, up; the test then stops it with Ctrl-C.
    `settings`: more EDURANKER_* variables in its environment, by field name."""
    ports = {service: free_port() for service in PORT_FIELDS}
    env = {**os.environ, **tiny_env(tiny_model, **settings),
           **{f"EDURANKER_{PORT_FIELDS[service].upper()}": str(port) for service, port in ports.items()}}
    log = workdir / "run.log"
    with log.open("wb") as out:
        # A session of its own: the test is the terminal, and SIGINT to the group is its Ctrl-C.
        launcher = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "run", "--workdir", str(workdir / "var"), *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "Ctrl-C stops everything" in log.read_text() or launcher.poll() is not None,
                 240, what="the stack up or the launcher gone")
        assert launcher.poll() is None, f"the launcher exited with code {launcher.returncode}"
        yield launcher, log
    except AssertionError as exc:  # a failed start, or a failed check: either way, what the logs say
        raise AssertionError(f"{exc}\n{logs(workdir)}") from None
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)


def logs(workdir: Path, lines: int = 15) -> str:
    """The end of the launcher's log and of every log it writes: what a failed start says."""
    paths = [workdir / "run.log", *sorted((workdir / "var").rglob("*.log"))]
    return "\n".join(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                     for path in paths if path.exists())


def ctrl_c(launcher: subprocess.Popen[bytes], log: Path) -> str:
    os.killpg(launcher.pid, signal.SIGINT)
    assert launcher.wait(timeout=120) == 0, log.read_text()[-3000:]
    return log.read_text()


def stored_inference(store_url: str, inference_id: str) -> bool:
    async def read() -> bool:
        store = await open_store(store_url)
        try:
            return await store.get_inference(inference_id) is not None
        finally:
            await store.close()

    return asyncio.run(read())


def test_ctrl_c_stops_every_service_cleanly(workdir: Path, tiny_model: Path, mongodb: str) -> None:
    """On a MongoDB given in the environment, as `EDURANKER_STORE_URL=mongodb://... make run` is."""
    store_url = database_url(mongodb)
    with launched(workdir, tiny_model, store_url=store_url) as (launcher, log):
        reranker = re.search(r"reranker +(http://\S+)", log.read_text())
        assert reranker is not None
        search = httpx.post(f"{reranker.group(1)}/api/reranking/search-with-reranking",
                            json={"query_text": "algebra", "top_k": 3}, timeout=30)
        assert search.status_code == 200, search.text
        wait_for(lambda: stored_inference(store_url, search.json()["inference_id"]), 30, 0.2,
                 "the search logged in the MongoDB given")
        assert not list((workdir / "var").glob("*.db")), "no SQLite store beside the MongoDB given"
        # The reranker answered before its vectors were all in; the launcher says when they are.
        wait_for(lambda: "vectors: all 350 in" in log.read_text(), 120, what="the vectors reported all in")
        broker_pid = int(log.read_text().split("event=broker_started")[1].split("pid=")[1].split()[0])
        # A normal start reads like one: no error line from the launcher or any service (the
        # broker is waited for quietly while it starts; shared.messaging.broker.BrokerOutage).
        for path in [log, *sorted((workdir / "var" / "logs").glob("*.log"))]:
            errors = [line for line in path.read_text().splitlines() if "level=ERROR" in line]
            assert not errors, f"{path.name}: " + "\n".join(errors[:5])
        output = ctrl_c(launcher, log)
    assert "event=service_killed" not in output, output[-3000:]
    assert "event=broker_stopped" in output
    assert not Path(f"/proc/{broker_pid}").exists()


def test_monitor_starts_prometheus_on_the_stack_and_prints_its_url(workdir: Path, tiny_model: Path) -> None:
    binary = debian_program("prometheus", "prometheus")
    port = free_port()
    with launched(workdir, tiny_model, "--monitor", "--prometheus", binary,
                  "--prometheus-port", str(port)) as (launcher, log):
        printed = re.search(r"prometheus +(http://\S+)", log.read_text())
        assert printed is not None and printed.group(1) == f"http://127.0.0.1:{port}", log.read_text()
        url = printed.group(1)

        def scraped_up() -> set[str]:
            targets = httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
            return {t["labels"]["job"] for t in targets if t["health"] == "up"}

        # The shipped 15 s scrape interval: the first scrape of each target comes within one.
        wait_for(lambda: scraped_up() >= set(SERVICES), 60, 1, "the four services scraped")
        rules = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert sum(len(group["rules"]) for group in rules) > 0
        output = ctrl_c(launcher, log)
    assert "event=prometheus_stopped" in output, output[-3000:]
    assert "event=broker_stopped" in output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/-/ready", timeout=2)


def test_a_port_already_taken_stops_the_start_with_what_to_do(workdir: Path, tiny_model: Path) -> None:
    """An earlier `make run` still up holds the ports; its `/ready` must not pass for ours."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        env = {**os.environ, **tiny_env(tiny_model), "EDURANKER_COLLECTOR_PORT": str(taken)}
        started = subprocess.run(
            [sys.executable, "-m", "tools.cli", "run", "--workdir", str(workdir / "var")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 1, started.stdout + started.stderr
    assert "error: port in use: " in started.stderr and f"collector {taken}" in started.stderr
    assert "Is another `make run` up?" in started.stderr
    assert "Traceback" not in started.stderr and "event=broker_started" not in started.stdout + started.stderr


def lingering(port: int) -> set[str]:
    """States of the closed connections the kernel still keeps on loopback `port` (/proc/net/tcp)."""
    names = {"04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "09": "LAST_ACK"}
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return {names[state] for _, local, _, state, *_ in (line.split() for line in lines)
            if int(local.split(":")[1], 16) == port and state in names}


def test_a_second_start_right_after_a_stop_is_not_blocked_by_closed_connections(workdir: Path) -> None:
    """`make run`, Ctrl-C, `make run` with the search page open: the browser's keep-alive connections,
    closed by the stopped server, linger in FIN-WAIT or TIME_WAIT, and nothing listens any more."""
    env = {"EDURANKER_COLLECTOR_PORT": str(free_port())}
    with LocalStack(workdir / "first", env=dict(env), fixed_ports=True) as first:
        first.start(services=("collector",))
        port = first.ports["collector"]
        browser = httpx.Client(timeout=10)  # keeps its connection open, as a browser tab does
        assert browser.get(first.url("collector") + "/health").status_code == 200
        first.stop()
    try:
        assert lingering(port), "the stopped server's connection should linger"
        with socket.socket() as plain, pytest.raises(OSError):  # the check this replaces said "in use"
            plain.bind(("127.0.0.1", port))
        with LocalStack(workdir / "second", env=dict(env), fixed_ports=True) as second:
            second.start(services=("collector",))
            assert httpx.get(second.url("collector") + "/health", timeout=10).status_code == 200
    finally:
        browser.close()
