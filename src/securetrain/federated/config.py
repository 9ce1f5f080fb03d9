"""The federated setting, validated up front with one-line errors."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from securetrain.errors import ConfigError

AGGREGATORS = ("auto", "fedavg", "krum", "median", "trimmed-mean")
ROBUST = ("krum", "median", "trimmed-mean")
# What "auto" aggregates with: the coordinate-wise median where the server sees each update
# (one site of three cannot move it outside the others' range), else uniform FedAvg.
DEFAULT_ROBUST = "median"
ATTACKS = ("none", "label-flip", "sign-flip", "scaling")
CLIENT_DP = ("none", "fixed")
TOTAL_LOCAL_EPOCHS = 10
MAX_ROUNDS = 1000
MAX_LOCAL_EPOCHS = 1000
MAX_SITES = 10_000
# What the server tells every site about a run (no paths, no keys); a site checks them and
# holds the server to those it reserved its budget for.
SITE_SETTINGS = {
    "sites",
    "rounds",
    "secagg",
    "aggregator",
    "epsilon",
    "delta",
    "local_epochs",
    "model",
    "batch_size",
    "lr",
    "max_grad_norm",
    "client_dp",
    "client_noise",
    "client_clip",
}


class FederatedConfig(BaseModel):
    """One federated training run: the sites, the rounds, the aggregation and the privacy."""

    model_config = ConfigDict(extra="forbid")
    data: str
    sites: int = 3
    rounds: int = 3
    partition: str = "iid"
    secagg: bool = False
    aggregator: str = "auto"
    attack: str = "none"
    malicious: int = 0
    epsilon: float = 2.0
    delta: float = 1e-5
    local_epochs: int | None = None
    model: Literal["logreg", "mlp"] = "logreg"
    batch_size: int | None = None
    lr: float | None = None
    max_grad_norm: float | None = None
    client_dp: str = "none"
    client_noise: float = 0.0
    client_clip: float = 1.0  # L2 bound of each site's update per round, in every mode
    out: Path | None = None
    key_dir: Path | None = None
    passphrase_env: str | None = None
    store: str | None = None
    site_budget: float | None = None
    seed: int | None = None
    label: str | None = None
    schema_path: Path | None = None

    @property
    def epochs_per_round(self) -> int:
        """As given, or about ten passes over each site's data in all (at least one a round)."""
        return self.local_epochs or max(1, round(TOTAL_LOCAL_EPOCHS / self.rounds))

    @property
    def site_lr(self) -> float:
        return self.lr or (0.3 if self.model == "logreg" else 0.1)

    @property
    def site_clip(self) -> float:
        """Per-sample clipping bound at the sites."""
        return self.max_grad_norm or (0.2 if self.model == "logreg" else 1.0)

    @property
    def aggregation(self) -> str:
        """The aggregator that runs: as given, or for ``auto`` the median when the server sees
        each site's update, FedAvg (uniform weights) under SecAgg+ or client-level DP."""
        if self.aggregator != "auto":
            return self.aggregator
        return "fedavg" if self.secagg or self.client_dp != "none" else DEFAULT_ROBUST

    def site_settings(self) -> str:
        """The settings a site receives, as JSON."""
        return self.model_dump_json(include=SITE_SETTINGS)

    @property
    def dirichlet_alpha(self) -> float | None:
        match = re.fullmatch(r"dirichlet:([0-9.]+)", self.partition)
        return float(match.group(1)) if match else None

    @model_validator(mode="after")
    def _checked(self) -> FederatedConfig:
        """Every value and combination checked when the setting is built (or copied through
        ``model_validate``), with a one-line error naming the setting."""
        self._check_ranges()
        self._check_combinations()
        self._check_privacy()
        return self

    def _check_ranges(self) -> None:
        if self.sites < 2:
            raise ConfigError(f"Federated training needs at least 2 sites. Found {self.sites}.")
        if self.sites > MAX_SITES:
            raise ConfigError(
                f"Federated training takes at most {MAX_SITES} sites. Found {self.sites}."
            )
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise ConfigError(f"Rounds must be between 1 and {MAX_ROUNDS}. Found {self.rounds}.")
        if self.local_epochs is not None and not 1 <= self.local_epochs <= MAX_LOCAL_EPOCHS:
            raise ConfigError(
                f"Local epochs must be between 1 and {MAX_LOCAL_EPOCHS}. Found {self.local_epochs}."
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"Batch size must be at least 1. Found {self.batch_size}.")
        for name, value in (("Learning rate", self.lr), ("Clipping bound", self.max_grad_norm)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive finite number. Found {value}.")
        if self.client_dp == "adaptive":
            raise ConfigError(
                "Adaptive client clipping is not offered: each update of its clipping bound is a "
                "release of its own that is not accounted; use `client_dp` fixed."
            )
        if self.partition != "iid":
            alpha = self.dirichlet_alpha
            if alpha is None or not (alpha > 0 and math.isfinite(alpha)):
                raise ConfigError(
                    f"Partition must be iid or dirichlet:ALPHA with ALPHA > 0. Found {self.partition!r}."
                )

    def _check_combinations(self) -> None:
        for name, choice, choices in (
            ("Aggregator", self.aggregator, AGGREGATORS),
            ("Attack", self.attack, ATTACKS),
            ("Client DP", self.client_dp, CLIENT_DP),
        ):
            if choice not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}. Found {choice!r}.")
        if self.secagg and self.aggregator in ROBUST:
            raise ConfigError(
                f"`secagg` hides each site's update from the server, and `aggregator` "
                f"{self.aggregator} needs to see them: they cannot be combined."
            )
        if self.secagg and self.client_dp != "none":
            raise ConfigError(
                "Client-level DP by server-side clipping needs each site's update, which `secagg` "
                "hides from the server: they cannot be combined."
            )
        if self.client_dp != "none" and self.aggregation != "fedavg":
            raise ConfigError(
                f"Client-level DP works with `aggregator` fedavg. Found {self.aggregator!r}."
            )
        if not 0 <= self.malicious < self.sites:
            raise ConfigError(
                f"Malicious sites must be between 0 and {self.sites - 1}. Found {self.malicious}."
            )
        if self.attack == "none" and self.malicious:
            raise ConfigError("`malicious` needs an `attack` (label-flip, sign-flip or scaling).")
        if self.attack != "none" and not self.malicious:
            raise ConfigError(f"`attack` {self.attack} needs `malicious` K with K >= 1.")
        if self.aggregation == "krum" and self.sites < 2 * self.malicious + 3:
            raise ConfigError(
                f"Krum tolerates K malicious sites only with at least 2K + 3 sites. Found "
                f"{self.sites} sites and K = {self.malicious}."
            )

    def _check_privacy(self) -> None:
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError(f"Epsilon must be a positive finite number. Found {self.epsilon}.")
        if not 0 < self.delta < 1:
            raise ConfigError(f"Delta must be in (0, 1). Found {self.delta}.")
        if self.client_noise < 0 or not math.isfinite(self.client_noise):
            raise ConfigError(f"Client noise must be >= 0. Found {self.client_noise}.")
        if self.client_dp != "none" and self.client_noise == 0:
            raise ConfigError("Client-level DP needs `client_noise` > 0.")
        if self.site_budget is not None and not (
            self.site_budget > 0 and math.isfinite(self.site_budget)
        ):
            raise ConfigError(f"Site budget must be a positive ε. Found {self.site_budget}.")
        if not (self.client_clip > 0 and math.isfinite(self.client_clip)):
            raise ConfigError(f"Client clipping bound must be > 0. Found {self.client_clip}.")
