"""Fine-tuning the cross-encoder on feedback pairs with sentence-transformers' trainer."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
from transformers import EarlyStoppingCallback, TrainerCallback

from shared.ml.dataset import Pair
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The guide's hyperparameters; `auto` picks them from the data size the way the guide advises."""

    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    seed: int = 42
    early_stopping_patience: int = 1
    auto: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainConfig:
        return cls(epochs=settings.num_epochs, batch_size=settings.batch_size,
                   learning_rate=settings.learning_rate, warmup_ratio=settings.warmup_ratio,
                   seed=settings.seed)

    def for_data_size(self, n_pairs: int) -> TrainConfig:
        """The guide: under 100 pairs 2-3 epochs at 5e-5; over 500 pairs 5-7 epochs at 2e-5."""
        if not self.auto:
            return self
        if n_pairs < 100:
            return replace(self, epochs=3, learning_rate=5e-5)
        if n_pairs > 500:
            return replace(self, epochs=5, learning_rate=2e-5)
        return replace(self, epochs=3, learning_rate=3e-5)


@dataclass
class TrainResult:
    seconds: float
    config: dict[str, object]
    loss_history: list[dict[str, float]] = field(default_factory=list)
    batch_size_used: int = 0


class _LossLog(TrainerCallback):
    def __init__(self, sink: list[dict[str, float]], progress: Callable[[str], None] | None) -> None:
        self.sink = sink
        self.progress = progress

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN003
        if logs:
            entry = {"step": float(state.global_step), "epoch": float(state.epoch or 0)}
            entry.update({k: float(v) for k, v in logs.items() if isinstance(v, int | float)})
            self.sink.append(entry)
            if self.progress:
                self.progress(" ".join(f"{k}={v:.4g}" for k, v in entry.items()))


def _dataset(pairs: list[Pair]) -> Dataset:
    return Dataset.from_dict({
        "query": [p.query for p in pairs],
        "text": [p.text for p in pairs],
        "label": [float(p.label) for p in pairs],
    })


def fine_tune(model: CrossEncoder, train: list[Pair], val: list[Pair], config: TrainConfig,
              progress: Callable[[str], None] | None = None, show_bar: bool = False) -> TrainResult:
    """Trains `model` in place. Out of GPU memory: retries with half the batch, and says so."""
    config = config.for_data_size(len(train))
    positives = sum(p.label for p in train)
    negatives = len(train) - positives
    # Weight the positive class by the imbalance so a mostly-dislike dataset still teaches "like".
    pos_weight = torch.tensor(negatives / positives if positives else 1.0)
    batch_size = config.batch_size
    while True:
        try:
            return _run(model, train, val, replace(config, batch_size=batch_size), pos_weight,
                        progress, show_bar)
        except torch.cuda.OutOfMemoryError:
            if batch_size <= 1:
                raise
            torch.cuda.empty_cache()
            batch_size //= 2
            log.warning("event=train_oom action=retry batch_size=%d", batch_size)


def _run(model: CrossEncoder, train: list[Pair], val: list[Pair], config: TrainConfig,
         pos_weight: torch.Tensor, progress: Callable[[str], None] | None, show_bar: bool) -> TrainResult:
    history: list[dict[str, float]] = []
    use_eval = bool(val) and config.early_stopping_patience > 0
    on_gpu = model.device.type == "cuda"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eduranker-train-") as out:
        args = CrossEncoderTrainingArguments(
            output_dir=out,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=max(config.batch_size, 32),
            learning_rate=config.learning_rate,
            warmup_steps=config.warmup_ratio,
            seed=config.seed,
            fp16=on_gpu,
            eval_strategy="epoch" if use_eval else "no",
            save_strategy="epoch" if use_eval else "no",
            save_total_limit=1,
            load_best_model_at_end=use_eval,
            metric_for_best_model="eval_loss" if use_eval else None,
            greater_is_better=False,
            logging_steps=max(1, len(train) // (config.batch_size * 4)),
            report_to="none",
            disable_tqdm=not show_bar,
            dataloader_num_workers=0,
            use_cpu=not on_gpu,
        )
        callbacks: list[TrainerCallback] = [_LossLog(history, progress)]
        if use_eval:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
        trainer = CrossEncoderTrainer(
            model=model,
            args=args,
            train_dataset=_dataset(train),
            eval_dataset=_dataset(val) if use_eval else None,
            loss=BinaryCrossEntropyLoss(model, pos_weight=pos_weight),
            callbacks=callbacks,
        )
        trainer.train()
    model.model.eval()
    return TrainResult(seconds=time.perf_counter() - start, config=asdict(config),
                       loss_history=history, batch_size_used=config.batch_size)
