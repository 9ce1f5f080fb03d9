"""DP events: immutable records of the mechanisms that touched private data.

They serialise to the JSON that a model card carries (``privacy.events``), and convert to
``dp_accounting`` events for accounting. Noise multipliers are normalised to sensitivity 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dp_accounting import dp_event

from securetrain.errors import ConfigError


def _check_noise(noise_multiplier: float) -> None:
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ConfigError(
            f"Noise multiplier must be a positive finite number. Found {noise_multiplier}."
        )


def _check_count(count: int) -> None:
    if not (isinstance(count, int) and count >= 0):
        raise ConfigError(f"Event count must be a non-negative integer. Found {count!r}.")


@dataclass(frozen=True)
class PoissonGaussianEvent:
    """``count`` steps of the Gaussian mechanism on a Poisson subsample of rate ``sample_rate``."""

    sample_rate: float
    noise_multiplier: float
    count: int = 1

    def __post_init__(self) -> None:
        if not (0 < self.sample_rate <= 1):
            raise ConfigError(f"Sampling rate must be in (0, 1]. Found {self.sample_rate}.")
        _check_noise(self.noise_multiplier)
        _check_count(self.count)

    def to_dp_event(self) -> dp_event.DpEvent:
        step = dp_event.PoissonSampledDpEvent(
            self.sample_rate, dp_event.GaussianDpEvent(self.noise_multiplier)
        )
        return dp_event.SelfComposedDpEvent(step, self.count)

    def to_json(self) -> dict[str, Any]:
        return {
            "mechanism": "poisson_subsampled_gaussian",
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "count": self.count,
        }


@dataclass(frozen=True)
class GaussianEvent:
    """``count`` releases of the Gaussian mechanism on the whole data, sensitivity 1."""

    noise_multiplier: float
    count: int = 1

    def __post_init__(self) -> None:
        _check_noise(self.noise_multiplier)
        _check_count(self.count)

    def to_dp_event(self) -> dp_event.DpEvent:
        return dp_event.SelfComposedDpEvent(
            dp_event.GaussianDpEvent(self.noise_multiplier), self.count
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "mechanism": "gaussian",
            "noise_multiplier": self.noise_multiplier,
            "count": self.count,
        }


Event = PoissonGaussianEvent | GaussianEvent


def to_dp_event(events: Iterable[Event]) -> dp_event.DpEvent:
    """The composition of ``events`` as one ``dp_accounting`` event."""
    return dp_event.ComposedDpEvent([e.to_dp_event() for e in events if e.count > 0])


def events_to_json(events: Sequence[Event]) -> list[dict[str, Any]]:
    return [e.to_json() for e in events]


def events_from_json(items: Iterable[dict[str, Any]]) -> list[Event]:
    """Parse ``privacy.events`` from a model card; unknown mechanisms are refused."""
    out: list[Event] = []
    for item in items:
        kind = item.get("mechanism")
        if kind == "poisson_subsampled_gaussian":
            out.append(
                PoissonGaussianEvent(
                    sample_rate=float(item["sample_rate"]),
                    noise_multiplier=float(item["noise_multiplier"]),
                    count=int(item["count"]),
                )
            )
        elif kind == "gaussian":
            out.append(GaussianEvent(float(item["noise_multiplier"]), int(item["count"])))
        else:
            raise ConfigError(f"Unknown DP mechanism in event list. Found {kind!r}.")
    return out
