"""Shared fixtures: the real embedded broker, a tiny BERT built from a config, the sample data."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shared.broker import EmbeddedBroker
from tools.localstack import SERVICES, LocalStack

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CATALOGUE = ROOT / "data" / "sample_catalogue.jsonl"
DATASETS = ROOT.parent / "shared" / "datasets"


def build_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with the real MiniLM tokenizer: real model code, seconds to train."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from shared.ml.model import offline_weights

    tokenizer = AutoTokenizer.from_pretrained(offline_weights())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path / "models", ignore_errors=True)


def tiny_env(tiny_model: Path, **settings: object) -> dict[str, str]:
    """A stack's environment on the tiny model; `settings` are EDURANKER_* overrides by field name."""
    return {"EDURANKER_BASE_MODEL": str(tiny_model), "EDURANKER_EMBEDDING_MODEL": str(tiny_model),
            **{f"EDURANKER_{name.upper()}": str(value) for name, value in settings.items()}}


@contextmanager
def tiny_stack(workdir: Path, tiny_model: Path, services: tuple[str, ...] = SERVICES,
               **settings: object) -> Iterator[LocalStack]:
    """The broker and `services` as real processes on the tiny model, serving the sample catalogue."""
    with LocalStack(workdir, env=tiny_env(tiny_model, **settings)) as running:
        running.start(catalogue=SAMPLE_CATALOGUE, services=services)
        yield running
