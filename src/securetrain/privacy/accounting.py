"""Privacy accounting: pure functions from DP events to (epsilon, delta).

All numbers come from Google's ``dp_accounting``: the PLD accountant by default (tight), the
RDP accountant on request (looser, faster). Nothing here keeps state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from securetrain.errors import ConfigError
from securetrain.privacy.events import Event, GaussianEvent, PoissonGaussianEvent, to_dp_event

ACCOUNTANTS = ("pld", "rdp")
_SIGMA_FLOOR = 0.2
_SIGMA_CEILING = 1e4
PLD_INTERVAL = 1e-4  # dp_accounting's default grid for the privacy loss, used on every card


def check_delta(delta: float) -> None:
    if not (0 < delta < 1):
        raise ConfigError(f"Delta must be in (0, 1). Found {delta}.")


def check_epsilon(epsilon: float) -> None:
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ConfigError(f"Epsilon must be a positive finite number. Found {epsilon}.")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"Accountant must be one of {', '.join(ACCOUNTANTS)}. Found {accountant!r}."
        )


def compute_epsilon(events: Sequence[Event], *, delta: float, accountant: str = "pld") -> float:
    """The epsilon of the composition of ``events`` at ``delta``."""
    return _epsilon(events, delta, accountant, PLD_INTERVAL)


def _epsilon(events: Sequence[Event], delta: float, accountant: str, interval: float) -> float:
    check_delta(delta)
    _check_accountant(accountant)
    if not any(e.count for e in events):
        return 0.0
    acc = (
        pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
        if accountant == "pld"
        else rdp_privacy_accountant.RdpAccountant()
    )
    acc.compose(to_dp_event(events))
    return float(acc.get_epsilon(delta))


def _search_interval(target_epsilon: float) -> float:
    """The PLD grid for calibration: dp_accounting discretises pessimistically, so a coarser grid
    only overstates ε, and a σ that fits on it fits on the card's finer grid too. Scaling the
    grid with the target keeps the relative error near 1e-4 and makes large ε cheap (a σ for
    ε = 100 takes seconds instead of a minute)."""
    return PLD_INTERVAL * max(1.0, target_epsilon)


def _smallest_sigma(epsilon_of: Callable[[float], float], target_epsilon: float) -> float:
    """Smallest sigma, to within 1%, whose epsilon does not exceed the target (epsilon falls with sigma)."""
    hi = 1.0
    while epsilon_of(hi) > target_epsilon:
        hi *= 2
        if hi > _SIGMA_CEILING:
            raise ConfigError(
                f"No noise multiplier up to {_SIGMA_CEILING:g} reaches epsilon {target_epsilon}; "
                "raise epsilon or lower the number of steps."
            )
    lo = hi / 2
    while lo > _SIGMA_FLOOR and epsilon_of(lo) <= target_epsilon:
        hi, lo = lo, lo / 2
    if lo <= _SIGMA_FLOOR:
        lo = _SIGMA_FLOOR
        if epsilon_of(lo) <= target_epsilon:
            return lo
    while hi / lo > 1.005:
        mid = math.sqrt(hi * lo)
        if epsilon_of(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    fixed_events: Sequence[Event] = (),
    accountant: str = "pld",
) -> float:
    """Smallest noise multiplier (to within 1%) for DP-SGD whose epsilon stays within the target.

    ``fixed_events`` are mechanisms already spent on the same data (for example noisy
    preprocessing statistics); the composition of them and the DP-SGD steps is what must fit.
    """
    check_epsilon(target_epsilon)
    check_delta(delta)
    if not (0 < sample_rate <= 1):
        raise ConfigError(f"Sampling rate must be in (0, 1]. Found {sample_rate}.")
    if steps < 1:
        raise ConfigError(f"Number of steps must be at least 1. Found {steps}.")
    if (
        fixed_events
        and compute_epsilon(fixed_events, delta=delta, accountant=accountant) >= target_epsilon
    ):
        raise ConfigError(
            f"The fixed events alone already spend the target epsilon {target_epsilon}."
        )

    interval = _search_interval(target_epsilon)

    def epsilon_of(sigma: float) -> float:
        sgd = PoissonGaussianEvent(sample_rate=sample_rate, noise_multiplier=sigma, count=steps)
        return _epsilon([*fixed_events, sgd], delta, accountant, interval)

    return _smallest_sigma(epsilon_of, target_epsilon)


def calibrate_gaussian(
    target_epsilon: float, delta: float, *, count: int = 1, accountant: str = "pld"
) -> float:
    """Smallest noise multiplier (to within 1%) for ``count`` Gaussian releases within the target."""
    check_epsilon(target_epsilon)
    check_delta(delta)

    interval = _search_interval(target_epsilon)

    def epsilon_of(sigma: float) -> float:
        return _epsilon([GaussianEvent(sigma, count)], delta, accountant, interval)

    return _smallest_sigma(epsilon_of, target_epsilon)
