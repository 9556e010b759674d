"""Settings for tools run beside `make run` (the notebook, the sample feedback generator).

They read the same `EDURANKER_*` settings as the services; what is left unset points at the
store and registry `make run` uses under `var/`, and relative paths are taken from the
repository root rather than from wherever the tool was started (the notebook runs in
`notebooks/`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shared.settings import Settings
from tools.cli import ROOT
from tools.localstack import offline_defaults

LOCAL_WORKDIR = ROOT / "var"
"""`python -m tools.cli run --workdir` default: the local stack's store, registry and logs."""


def local_settings() -> Settings:
    """The services' settings, anchored at the repository; offline weights when no model hub answers."""
    offline: dict[str, str] = {}
    offline_defaults(offline)
    if "HF_HUB_OFFLINE" in offline:
        os.environ.setdefault("HF_HUB_OFFLINE", offline["HF_HUB_OFFLINE"])
    settings = Settings(**{k.removeprefix("EDURANKER_").lower(): v for k, v in offline.items()
                           if k.startswith("EDURANKER_")})
    updates: dict[str, Any] = {}
    if "EDURANKER_MODEL_DIR" not in os.environ:
        updates["model_dir"] = LOCAL_WORKDIR / "models" / "cross_encoder"
    elif not settings.model_dir.is_absolute():
        updates["model_dir"] = ROOT / settings.model_dir
    if settings.store_url.startswith("sqlite:///"):
        path = Path(settings.store_url.removeprefix("sqlite:///"))
        if not path.is_absolute():
            updates["store_url"] = f"sqlite:///{ROOT / path}"
    return settings.model_copy(update=updates)
