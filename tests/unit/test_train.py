"""Fine-tuning: the guide's hyperparameters and auto mode, batching, early stopping, OOM retry."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import TrainerControl, TrainerState

import shared.ml.training.train as train_module
from shared.ml.runtime.device import cpu_has_fast_bf16
from shared.ml.runtime.loading import cross_scores, load_cross_encoder
from shared.ml.training.dataset import Pair
from shared.ml.training.hyperparameters import TrainConfig
from shared.ml.training.train import (
    BestOnValidation,
    LengthGroupedBatchSampler,
    _dataset,
    fine_tune,
    positive_weight,
    resolve_precision,
)
from shared.settings import Settings

TOPICS = ("algebra", "geometry", "physics", "chemistry", "history", "biology", "poetry", "music")


def marker_pairs(queries: tuple[str, ...]) -> list[Pair]:
    """Likes exactly on texts with the marker word: a signal even a tiny model learns in seconds."""
    pairs = []
    for topic in queries:
        for j in range(8):
            liked = j % 2 == 0
            text = f"an introduction to {topic}, lesson {j}" + (" zephyr" if liked else "")
            pairs.append(Pair(f"{topic} course", f"{topic}-{j}", text, int(liked)))
    return pairs


@pytest.fixture
def one_thread():  # noqa: ANN201
    """Tiny models spend their time in thread hand-offs when other processes share the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_auto_follows_the_guide_by_data_size_and_explicit_values_win() -> None:
    auto = TrainConfig(epochs=9, learning_rate=1e-5, auto=True)
    small, middle, large = auto.for_data_size(80), auto.for_data_size(300), auto.for_data_size(600)
    assert (small.epochs, small.learning_rate) == (3, 5e-5)
    assert (middle.epochs, middle.learning_rate) == (3, 2e-5)
    assert (large.epochs, large.learning_rate) == (5, 2e-5)
    pinned = auto.with_overrides({"epochs": 7}).for_data_size(80)
    assert (pinned.epochs, pinned.learning_rate) == (7, 5e-5)
    assert pinned.as_dict()["pinned"] == ["epochs"]
    manual = TrainConfig(epochs=4, learning_rate=1e-5)
    assert manual.for_data_size(80) == manual


def test_every_value_comes_from_settings_and_a_request_is_validated() -> None:
    settings = Settings(num_epochs=4, batch_size=8, learning_rate=3e-5, warmup_ratio=0.2, seed=7,
                        train_auto=True, train_precision="fp32", train_early_stopping_patience=2)
    config = TrainConfig.from_settings(settings)
    assert (config.epochs, config.batch_size, config.learning_rate, config.warmup_ratio, config.seed,
            config.auto, config.precision, config.early_stopping_patience) == (
        4, 8, 3e-5, 0.2, 7, True, "fp32", 2)
    overridden = config.with_overrides({"batch_size": 32, "auto": False})
    assert overridden.batch_size == 32 and overridden.auto is False and overridden.epochs == 4
    for bad in ({"epochs": 0}, {"learning_rate": 1.0}, {"batch": 16}, {"precision": "int4"}):
        with pytest.raises(ValidationError):
            config.with_overrides(bad)


def test_precision_uses_bf16_only_where_the_cpu_has_it(tmp_path: Path) -> None:
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    without.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert cpu_has_fast_bf16(with_bf16) and not cpu_has_fast_bf16(without)
    assert not cpu_has_fast_bf16(tmp_path / "missing")
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("fp16", cpu) == "fp32"  # no fp16 autocast on CPU
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")


def test_class_weighting_balances_likes_against_dislikes() -> None:
    pairs = [Pair("q", str(i), "t", int(i < 2)) for i in range(8)]
    assert positive_weight(pairs) == 3.0
    assert positive_weight(pairs[:2]) == 1.0


def test_length_grouped_batches_use_every_pair_once_with_less_padding() -> None:
    rng = np.random.default_rng(0)
    pairs = [Pair("q", str(i), "x" * int(n), 0) for i, n in enumerate(rng.integers(5, 400, 200))]
    sampler = LengthGroupedBatchSampler(_dataset(pairs), batch_size=16, drop_last=False, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 13
    assert sorted(i for b in batches for i in b) == list(range(200))

    def padded(batches: list[list[int]]) -> int:
        return sum(max(sampler.lengths[i] for i in b) * len(b) for b in batches)

    random_order = rng.permutation(200).tolist()
    random_batches = [random_order[i:i + 16] for i in range(0, 200, 16)]
    assert padded(batches) < 0.8 * padded(random_batches)
    assert list(sampler) == batches  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_early_stopping_keeps_the_best_epoch_in_memory_and_restores_it() -> None:
    model = torch.nn.Linear(2, 1)
    best = BestOnValidation(model, patience=1)
    state, control = TrainerState(), TrainerControl()
    weights = []
    for epoch, loss in enumerate((0.9, 0.5, 0.7), start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        weights.append(model.weight.detach().clone())
        state.epoch = float(epoch)
        best.on_evaluate(None, state, control, metrics={"eval_loss": loss})
    assert control.should_training_stop
    assert best.best_epoch == 2.0 and best.best_loss == 0.5
    best.restore()
    assert torch.equal(model.weight, weights[1])


def test_fine_tune_learns_the_signal_and_scores_like_the_saved_model(tiny_model: Path, tmp_path: Path,
                                                                     one_thread: None) -> None:
    model = load_cross_encoder(str(tiny_model), 64, "cpu")
    train, val = marker_pairs(TOPICS[:6]), marker_pairs(TOPICS[6:])
    config = TrainConfig(epochs=10, learning_rate=5e-3, early_stopping_patience=2, precision="bf16")
    result = fine_tune(model, train, val, config)
    scores = cross_scores(model, val[0].query, [p.text for p in val])
    labels = np.array([p.label for p in val])
    assert scores[labels == 1].min() > scores[labels == 0].max()
    # Mixed precision is for training only: what was evaluated is exactly what gets served.
    model.save_pretrained(str(tmp_path / "saved"))
    reloaded = load_cross_encoder(str(tmp_path / "saved"), 64, "cpu", fallback=False)
    np.testing.assert_array_equal(cross_scores(reloaded, val[0].query, [p.text for p in val]), scores)
    evaluated = [h for h in result.loss_history if "eval_loss" in h]
    assert evaluated and result.best_epoch is not None
    assert result.config["pos_weight"] == 1.0 and result.config["max_length"] == 64
    assert result.config["precision_used"] == "bf16" and result.oom_retries == 0


def test_out_of_gpu_memory_retries_from_the_same_weights_with_half_the_batch(
        tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        one_thread: None) -> None:
    model = load_cross_encoder(str(tiny_model), 64, "cpu")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    real_run, seen = train_module._run, []

    def run_once_out_of_memory(model, train, val, config, progress, show_bar):  # noqa: ANN001, ANN202
        unchanged = all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())
        seen.append((config.batch_size, unchanged))
        if len(seen) == 1:
            with torch.no_grad():
                next(model.parameters()).add_(1.0)  # a partly trained model must not be the restart point
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_run(model, train, val, config, progress, show_bar)

    monkeypatch.setattr(train_module, "_run", run_once_out_of_memory)
    with caplog.at_level(logging.WARNING, logger="shared.ml.training.train"):
        result = fine_tune(model, marker_pairs(TOPICS[:2]), [], TrainConfig(epochs=1, batch_size=16))
    assert seen == [(16, True), (8, True)]
    assert result.oom_retries == 1 and result.batch_size_used == 8 and result.config["oom_retries"] == 1
    assert "event=train_oom action=retry batch_size=8" in caplog.text
