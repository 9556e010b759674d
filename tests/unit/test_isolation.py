"""The guard of tests/unit/conftest.py holds: a unit test cannot start a process or connect."""

from __future__ import annotations

import socket
import subprocess

import httpx
import pytest


def test_a_unit_test_cannot_start_a_process_or_open_a_connection() -> None:
    with pytest.raises(AssertionError, match="start a process"):
        subprocess.run(["true"], check=False)
    with pytest.raises(AssertionError, match="open a connection"):
        httpx.get("http://127.0.0.1:9", timeout=1)
    with pytest.raises(AssertionError, match="listen on a port"), socket.socket() as server:
        server.bind(("127.0.0.1", 0))
