"""`make run`'s launcher: a start that logs no error, and Ctrl-C stops every part by itself, the
broker last."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from shared.broker import free_port
from shared.localstack import PORT_FIELDS, wait_for
from tests.conftest import ROOT, tiny_env


def test_ctrl_c_stops_every_service_cleanly(workdir: Path, tiny_model: Path) -> None:
    ports = {service: free_port() for service in PORT_FIELDS}
    env = {**os.environ, **tiny_env(tiny_model),
           **{f"EDURANKER_{PORT_FIELDS[service].upper()}": str(port) for service, port in ports.items()}}
    log = workdir / "run.log"
    with log.open("wb") as out:
        # A session of its own: the test is the terminal, and SIGINT to the group is its Ctrl-C.
        launcher = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "run", "--workdir", str(workdir / "var")],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "Ctrl-C stops everything" in log.read_text(), 240, what="the stack up")
        reranker = f"http://127.0.0.1:{ports['reranker']}"
        search = httpx.post(f"{reranker}/api/reranking/search-with-reranking",
                            json={"query_text": "algebra", "top_k": 3}, timeout=30)
        assert search.status_code == 200, search.text
        broker_pid = int(log.read_text().split("event=broker_started")[1].split("pid=")[1].split()[0])
        # A normal start reads like one: no error line from the launcher or any service (the
        # broker is waited for quietly while it starts; shared.broker.BrokerOutage).
        for path in [log, *sorted((workdir / "var" / "logs").glob("*.log"))]:
            errors = [line for line in path.read_text().splitlines() if "level=ERROR" in line]
            assert not errors, f"{path.name}: " + "\n".join(errors[:5])

        os.killpg(launcher.pid, signal.SIGINT)
        assert launcher.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    output = log.read_text()
    assert "event=service_killed" not in output, output[-3000:]
    assert "event=broker_stopped" in output
    assert not Path(f"/proc/{broker_pid}").exists()
