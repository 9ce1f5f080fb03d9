"""Training configuration, validated up front with one-line errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from securetrain.errors import ConfigError
from securetrain.privacy.accounting import ACCOUNTANTS
from securetrain.privacy.planner import default_batch_size


class TrainConfig(BaseModel):
    """Everything a training run needs. ``None`` means "choose a good default for this data"."""

    model_config = ConfigDict(extra="forbid")
    data: str = ""
    out: Path | None = None
    label: str | None = None
    features: list[str] | None = None
    schema_path: Path | None = None
    keep_identifiers: bool = False
    model: Literal["auto", "logreg", "mlp", "cnn"] = "auto"
    epsilon: float | None = None
    delta: float | None = None
    no_dp: bool = False
    epochs: int | None = None
    batch_size: int | None = None
    max_grad_norm: float | None = None
    lr: float | None = None
    accountant: str = "pld"
    preprocessing_share: float = 0.1
    test_fraction: float = 0.3
    classes: list[str] | None = None
    seed: int | None = None
    split_seed: str | None = None
    store: str | None = None
    key_dir: Path | None = None
    passphrase_env: str | None = None
    public_key: Path | None = None
    sign_key: Path | None = None
    max_physical_batch_size: int = 512
    checkpoint_every: int | None = None
    resume: str | None = None
    screen: Literal["drop", "warn", "off"] = "warn"

    def validate_choices(self) -> None:
        if not self.data:
            raise ConfigError(
                "Name the data to train on with --data (builtin:NAME, a file, or D.sealed)."
            )
        if self.out is None:
            raise ConfigError("Name the bundle directory to write with --out.")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(
                f"Checkpoint interval must be at least 1 step. Found {self.checkpoint_every}."
            )
        if self.no_dp:
            if self.epsilon is not None:
                raise ConfigError("--no-dp trains without privacy; do not also give --epsilon.")
        elif self.epsilon is None:
            raise ConfigError("An epsilon target is required (--epsilon), e.g. --epsilon 1.")
        elif not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError(f"Epsilon must be a positive finite number. Found {self.epsilon}.")
        if self.delta is not None and not (0 < self.delta < 1):
            raise ConfigError(f"Delta must be in (0, 1). Found {self.delta}.")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"Accountant must be one of {', '.join(ACCOUNTANTS)}. Found {self.accountant!r}."
            )
        for name in ("epochs", "batch_size", "max_physical_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(
                    f"{name.replace('_', ' ').capitalize()} must be at least 1. Found {value}."
                )
        for name in ("max_grad_norm", "lr"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(
                    f"{name.replace('_', ' ').capitalize()} must be > 0. Found {value}."
                )
        if not (0 < self.preprocessing_share < 1):
            raise ConfigError(
                f"Preprocessing share must be in (0, 1). Found {self.preprocessing_share}."
            )
        if not (0 < self.test_fraction < 1):
            raise ConfigError(f"Test fraction must be in (0, 1). Found {self.test_fraction}.")


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    epochs: int
    batch_size: int
    max_grad_norm: float
    lr: float
    optimizer: Literal["sgd-momentum", "adam"] = "sgd-momentum"


def choose_hyperparameters(config: TrainConfig, *, n_noisy: float, image: bool) -> Hyperparameters:
    """Good defaults for DP-SGD on this much data; anything the user set wins."""
    model = config.model if config.model != "auto" else ("cnn" if image else "logreg")
    batch = config.batch_size or default_batch_size(n_noisy)
    return Hyperparameters(
        model=model,
        epochs=config.epochs or (50 if config.no_dp else 25),
        batch_size=batch,
        max_grad_norm=config.max_grad_norm or (0.2 if model == "logreg" else 1.0),
        lr=config.lr or (0.3 if model == "logreg" else 0.1),
    )
