"""System programs some tests need (Chromium, Prometheus), taken from Debian's packages.

CI runs the suite on a clean machine as root: what is missing is installed there with apt-get.
Elsewhere a missing program skips its tests, with the reason, instead of failing them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache

import pytest

INSTALL_TIMEOUT_S = 600


def find(*names: str) -> str | None:
    for name in names:
        if path := shutil.which(name):
            return path
    return None


@cache
def install(package: str) -> str:
    """Debian's `package`, where we may install it; the reason otherwise (tried once a session)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"needs root and apt-get to install Debian's `{package}` package"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=INSTALL_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return f"`apt-get install {package}` failed: {str(exc)[:300]}"
    return ""


def debian_program(package: str, *names: str) -> str:
    """The first of `names` on PATH, installing `package` if none is there; else skips the test."""
    path = find(*names)
    if path is None:
        reason = install(package)
        path = find(*names)
        if path is None:
            pytest.skip(f"no {names[0]} (Debian package `{package}`): {reason or 'not found after install'}")
    return path
