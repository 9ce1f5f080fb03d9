"""The model card: what was trained, on what, with which guarantee, so that anyone can recompute it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from securetrain.data.identity import DataIdentity
from securetrain.data.preprocess import Preprocessor

CARD_FORMAT = "securetrain.model_card/v1"


class Architecture(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["logreg", "mlp", "cnn"]
    n_features: int
    n_classes: int
    hidden: list[int] = []
    image_shape: list[int] | None = None


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    architecture: Architecture
    input_schema: list[dict[str, str]]
    preprocessing: Preprocessor


class PrivacySection(BaseModel):
    """``epsilon`` is the PLD (or RDP) composition of ``events`` at ``delta`` minus
    ``delta_partition_selection`` (the delta spent by releasing category names). ``rng`` says
    in words which generator drew the sampling and the noise; ``secure_rng`` is true only when
    it was keyed from OS entropy."""

    model_config = ConfigDict(extra="forbid")
    mechanism: Literal["dp-sgd", "federated-dp-sgd", "none"]
    epsilon: float | None
    delta: float | None
    delta_partition_selection: float = 0.0
    delta_rule: str | None = None
    accountant: Literal["pld", "rdp"] | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int
    max_grad_norm: float | None
    expected_batch_size: float | None = None
    sampling: Literal["poisson", "shuffle"]
    unit: Literal["record"] = "record"
    secure_rng: bool
    rng: str | None = None
    preprocessing_epsilon_share: float | None = None
    events: list[dict[str, Any]]
    warning: str | None = None


class DataSection(BaseModel):
    """``identity`` names the trained-on data without a hash of the plaintext (the sealed
    manifest digest, a built-in dataset's digest, or a keyed commitment); None where the data
    never came to one place (a federated deployment)."""

    model_config = ConfigDict(extra="forbid")
    source: str
    label: str
    n_train: int
    n_test: int
    counts: str
    identity: DataIdentity | None
    split: dict[str, Any]
    sealed: dict[str, str] | None = None
    screening: dict[str, Any] | None = None


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    format: str = Field(default=CARD_FORMAT)
    model: ModelSection
    privacy: PrivacySection
    data: DataSection
    training: dict[str, Any]
    metrics: dict[str, Any]
    software: dict[str, str]
    signing: dict[str, str] | None = None
    federated: dict[str, Any] | None = None
