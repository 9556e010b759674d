"""Unit tests start no process and open no connection: `make test-fast` stays fast and needs nothing
running. Whatever needs a broker, a server, a store or a program belongs in tests/integration."""

from __future__ import annotations

import socket
import subprocess
from typing import Any, NoReturn

import pytest


def refused(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"a unit test tried to {what}: move it to tests/integration")
    return refuse


@pytest.fixture(autouse=True)
def no_processes_or_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "_execute_child", refused("start a process"))
    monkeypatch.setattr(socket.socket, "connect", refused("open a connection"))
    monkeypatch.setattr(socket.socket, "connect_ex", refused("open a connection"))
    monkeypatch.setattr(socket.socket, "bind", refused("listen on a port"))
