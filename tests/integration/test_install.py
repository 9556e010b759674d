"""`make install`: what the first install says, and the editable install it makes of the project."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT

BUILD_EDITABLE = "from setuptools import build_meta; print(build_meta.build_editable('dist'))"


def test_the_editable_install_is_a_path_entry_to_the_checkout_without_a_warning(tmp_path: Path) -> None:
    """setuptools' PEP 660 hook, as pip calls it for `pip install -e .`, on a copy of the project."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    for name in ("shared", "services", "tools"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-W", "always", "-c", BUILD_EDITABLE], cwd=project,
                          capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    # The import-hook strategy warns "Please be careful with folders in your working directory
    # with the same name as your package" (pip shows it as a BuildBackendWarning).
    assert "same name" not in output and "meta path finder" not in output, output[-3000:]
    with zipfile.ZipFile(project / "dist" / done.stdout.strip().splitlines()[-1]) as wheel:
        names = wheel.namelist()
        pth = [n for n in names if n.endswith(".pth")]
        assert len(pth) == 1 and not [n for n in names if n.endswith("_finder.py")], names
        assert Path(wheel.read(pth[0]).decode().strip()).resolve() == project.resolve()


def test_the_first_install_says_what_it_installs_and_shows_pips_progress(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    plan = subprocess.run(["make", "-n", "install", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True).stdout
    pip_lines = [line for line in plan.splitlines() if "-m pip install" in line]
    assert len(pip_lines) == 3 and not [line for line in pip_lines if "--quiet" in line or " -q" in line]
    assert "First install into" in plan and "1 to 5 minutes" in plan
    assert 'torch==2.13.0' in pip_lines[1] and '-e ".[dev]"' in pip_lines[2]
