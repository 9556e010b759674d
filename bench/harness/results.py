"""Where a run's results go, how they are written, and what is said about the machine beside them.

Figures are only comparable on the same machine under the same load, so every results file says
which machine it came from and the load around the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
VAR = ROOT / "var"
"""Work folders of the runs (stacks, caches): ignored by git, like `make run`'s."""


def add_output_arguments(parser: argparse.ArgumentParser, name: str, workdir: str | None = None) -> None:
    """--workdir (`var/<workdir>`, emptied run by run) when the run needs one, and --out
    (`bench/results/<name>.json`)."""
    if workdir is not None:
        parser.add_argument("--workdir", type=Path, default=VAR / workdir)
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json")


def write_json(path: Path, result: dict[str, Any]) -> None:
    """The results file, folders made as needed; anything JSON has no type for written as text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the cores were."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """The machine a run measured."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def fresh(folder: Path) -> Path:
    """`folder`, emptied of an earlier run's files."""
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def quiet_logging() -> None:
    """A run's own progress lines on stderr, the libraries' and services' clients' only when they warn."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("httpx", "kafka", "shared"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
