"""The local stack a benchmark plays through: its models and settings, given on the command line.

`tools.localstack.LocalStack` starts it (embedded broker, SQLite, the four services); this says
what it runs: which weights, which seed, which `EDURANKER_*` settings the benchmark changes.
"""

from __future__ import annotations

import argparse

from shared.settings import OFFLINE_BASE_MODEL


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--base-model, --embedding-model and --max-length, the offline weights by default."""
    parser.add_argument("--base-model", default=OFFLINE_BASE_MODEL)
    parser.add_argument("--embedding-model", default=OFFLINE_BASE_MODEL)
    parser.add_argument("--max-length", type=int, default=128)


def stack_env(args: argparse.Namespace, seed: int, **settings: object) -> dict[str, str]:
    """The stack's environment: the run's models (no model hub), its seed, and `settings`
    (`EDURANKER_*` overrides by field name)."""
    env = {"EDURANKER_BASE_MODEL": args.base_model, "EDURANKER_EMBEDDING_MODEL": args.embedding_model,
           "EDURANKER_SEED": str(seed), "EDURANKER_MAX_LENGTH": str(args.max_length), "HF_HUB_OFFLINE": "1"}
    return env | {f"EDURANKER_{k.upper()}": str(v) for k, v in settings.items()}
