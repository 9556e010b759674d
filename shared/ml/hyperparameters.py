"""What one training request may set (command line, admin API): light, so the CLI starts fast."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Hyperparameters(BaseModel):
    """Values one training request may set (command line, admin API); bounds keep a typo harmless."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(default=None, ge=1, le=100)
    batch_size: int | None = Field(default=None, ge=1, le=1024)
    learning_rate: float | None = Field(default=None, gt=0, le=0.01)
    warmup_ratio: float | None = Field(default=None, ge=0, le=0.5)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)  # transformers seeds numpy with it
    early_stopping_patience: int | None = Field(default=None, ge=0, le=100)
    auto: bool | None = None
    precision: Precision | None = None

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
