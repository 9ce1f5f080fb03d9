"""The model card: what was trained, on what, with which guarantee, so that anyone can recompute it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

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


class Section(BaseModel):
    """A card section whose keys depend on the run: unknown keys are refused, and a key its
    writer left out stays out of the JSON, so a card reads and writes back byte for byte."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _given_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {k: v for k, v in dumped.items() if k in self.model_fields_set}


class SplitSection(Section):
    """How the held-out rows were chosen: a keyed hash per record at ``seed``, or none (a
    federated deployment, where each site trains on all its rows)."""

    method: str
    test_fraction: float | None = None
    seed: str | None = None


class ScreeningSection(Section):
    """Which checks ran before training, and whether flagged rows were dropped; no counts."""

    mode: Literal["drop", "warn"]
    checks: list[str]
    note: str


class MetricsSection(Section):
    """Held-out metrics: DP ones (from one Gaussian release, with the AUC's noise interval and
    the histogram's bins) for a DP run, exact ones for a baseline; ``note`` says which."""

    test_accuracy: float | None = None
    test_auc: float | None = None
    test_auc_ci95: list[float] | None = None
    histogram_bins: int | None = None
    note: str


class TrainingSection(Section):
    """The DP-SGD hyperparameters of a run in one place."""

    model: str
    epochs: int
    batch_size: int
    max_grad_norm: float
    lr: float
    optimizer: str


class FederatedTrainingSection(Section):
    """Each site's local training in a federated run."""

    model: str
    lr: float
    max_grad_norm: float
    local_epochs: int
    optimizer: str


class SigningSection(Section):
    """Who signed the bundle (the key's fingerprint), in which format, in which file."""

    signer: str
    format: str
    signature_file: str


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
    split: SplitSection
    sealed: dict[str, str] | None = None
    screening: ScreeningSection | None = None


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    format: str = Field(default=CARD_FORMAT)
    model: ModelSection
    privacy: PrivacySection
    data: DataSection
    training: TrainingSection | FederatedTrainingSection
    metrics: MetricsSection
    software: dict[str, str]
    signing: SigningSection | None = None
    federated: dict[str, Any] | None = None
