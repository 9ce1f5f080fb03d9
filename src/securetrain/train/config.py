"""Training configuration in sections (data, privacy, model, keys, run control), each value
checked when the configuration is built, with one-line errors that name the setting.

Messages name settings in backquotes (`` `key_dir` ``); the CLI shows its own flag for each.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from securetrain.errors import ConfigError
from securetrain.privacy.planner import default_batch_size

ModelChoice = Literal["auto", "logreg", "mlp", "cnn"]
AccountantChoice = Literal["pld", "rdp"]
ScreenChoice = Literal["drop", "warn", "off"]


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


class Settings(BaseModel):
    """A section of settings: unknown names and values outside a choice are refused at once."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _one_of_the_choices(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        annotation = cls.model_fields[info.field_name].annotation
        if get_origin(annotation) is Literal and value not in get_args(annotation):
            choices = ", ".join(get_args(annotation))
            raise ConfigError(
                f"{_label(info.field_name)} must be one of {choices}. Found {value!r}."
            )
        return value


class DataSettings(Settings):
    """What to train on: the source (builtin:NAME, a CSV/Parquet file or D.sealed), its
    columns and declared schema, the held-out split and the screening before training."""

    data: str = ""
    label: str | None = None
    features: list[str] | None = None
    classes: list[str] | None = None
    schema_path: Path | None = None
    keep_identifiers: bool = False
    test_fraction: float = 0.3
    split_seed: str | None = None
    screen: ScreenChoice = "warn"

    @field_validator("classes")
    @classmethod
    def _two_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) < 2:
            raise ConfigError(f"`classes` needs at least two classes. Found {value}.")
        return value

    @field_validator("test_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ConfigError(f"Test fraction must be in (0, 1). Found {value}.")
        return value


class PrivacySettings(Settings):
    """The guarantee: ε (or `no_dp` for a baseline without one), δ, the accountant, and the
    share of ε spent on DP preprocessing statistics."""

    epsilon: float | None = None
    delta: float | None = None
    no_dp: bool = False
    accountant: AccountantChoice = "pld"
    preprocessing_share: float = 0.1

    @field_validator("epsilon")
    @classmethod
    def _positive_epsilon(cls, value: float | None) -> float | None:
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"Epsilon must be a positive finite number. Found {value}.")
        return value

    @field_validator("delta", "preprocessing_share")
    @classmethod
    def _open_unit_interval(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and not 0 < value < 1:
            assert info.field_name is not None
            raise ConfigError(f"{_label(info.field_name)} must be in (0, 1). Found {value}.")
        return value

    @model_validator(mode="after")
    def _epsilon_or_no_dp(self) -> PrivacySettings:
        if self.no_dp and self.epsilon is not None:
            raise ConfigError("`no_dp` trains without privacy; do not also give `epsilon`.")
        return self


class ModelSettings(Settings):
    """The model and its DP-SGD hyperparameters; ``None`` chooses a default for the data."""

    model: ModelChoice = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    max_grad_norm: float | None = None
    lr: float | None = None
    max_physical_batch_size: int = 512

    @field_validator("epochs", "batch_size", "max_physical_batch_size")
    @classmethod
    def _at_least_one(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value < 1:
            assert info.field_name is not None
            raise ConfigError(f"{_label(info.field_name)} must be at least 1. Found {value}.")
        return value

    @field_validator("max_grad_norm", "lr")
    @classmethod
    def _positive(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and not (value > 0 and math.isfinite(value)):
            assert info.field_name is not None
            raise ConfigError(f"{_label(info.field_name)} must be > 0. Found {value}.")
        return value


class KeySettings(Settings):
    """The key set (`key_dir`, unlocked by the passphrase in `passphrase_env`), the public key
    that signed the sealed data, and the key that signs the bundle."""

    key_dir: Path | None = None
    passphrase_env: str | None = None
    public_key: Path | None = None
    sign_key: Path | None = None


class RunControl(Settings):
    """Where the run writes (`out`, the ledger's `store`), its seed, checkpoints and resumption."""

    out: Path | None = None
    store: str | None = None
    seed: int | None = None
    checkpoint_every: int | None = None
    resume: str | None = None

    @field_validator("checkpoint_every")
    @classmethod
    def _interval(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ConfigError(f"Checkpoint interval must be at least 1 step. Found {value}.")
        return value


class TrainConfig(DataSettings, PrivacySettings, ModelSettings, KeySettings, RunControl):
    """Everything a training run needs, section by section; built flat, as the ledger stores it.
    ``None`` means "choose a good default for this data"; `data` is parsed when the run starts
    (``train.parse_source``)."""


def check_runnable(config: TrainConfig) -> None:
    """What a run needs beyond valid values: a bundle directory, and ε unless `no_dp`."""
    if config.out is None:
        raise ConfigError("Name the bundle directory to write with `out`.")
    if not config.no_dp and config.epsilon is None:
        raise ConfigError("An epsilon target is required (`epsilon`), e.g. `epsilon` 1.")


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
