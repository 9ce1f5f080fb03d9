"""The one DP-SGD planner: settings in, the mechanism and its events out.

Every path that trains with DP-SGD (a plaintext run, a reservation on sealed data and the run
under it, a federated site, ``make_private_with_epsilon``) plans here, so that what a ledger
reserves and what a run spends come from the same rules:

- expected batch size: a third of the (noisy or planned) row count, between 32 and 1024,
  unless given; sample rate ``q = min(1, batch / n)``;
- steps: ``ceil(epochs / q)`` per round, times the number of rounds;
- δ: given, or ``10^-max(5, digits(n) + 1)``; DP partition selection, where the run makes one,
  spends a tenth of that δ, and the accounting δ is the rest;
- the noise multiplier: the smallest (to within 1%) whose composition with the fixed events
  (preprocessing releases) stays within the target ε at the accounting δ (PLD by default).

Pure functions over immutable records; nothing here touches data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from securetrain.errors import ConfigError
from securetrain.privacy.accounting import (
    calibrate_noise,
    check_delta,
    check_epsilon,
    compute_epsilon,
)
from securetrain.privacy.events import Event, PoissonGaussianEvent

MIN_DELTA_EXPONENT = 5
SELECTION_DELTA_FRACTION = 0.1
MIN_BATCH, MAX_BATCH = 32, 1024
# Two epsilons that differ by less than this (relative) are equal for dominance checks: PLD
# discretisation makes the same events compose to values that differ in the last digits.
_DOMINANCE_TOLERANCE = 1e-9


def default_delta(n: float) -> tuple[float, str]:
    """A δ well below 1/n: 10^-(digits of n + 1), at most 1e-5; and the rule, for the card."""
    digits = max(1, math.ceil(math.log10(max(n, 2.0))))
    exponent = max(MIN_DELTA_EXPONENT, digits + 1)
    return 10.0**-exponent, f"10^-max({MIN_DELTA_EXPONENT}, digits(noisy n_train) + 1)"


def default_batch_size(n: float) -> int:
    """Large expected batches (a third of the data, between 32 and 1024): the regime where
    DP-SGD's signal-to-noise ratio is best at a fixed ε."""
    return int(min(MAX_BATCH, max(MIN_BATCH, round(n / 3))))


@dataclass(frozen=True)
class Deltas:
    """The run's δ, the part of it spent on DP partition selection, and the rest (accounting)."""

    delta: float
    rule: str
    selection: float

    @property
    def accounting(self) -> float:
        return self.delta - self.selection


def plan_deltas(*, n: float, delta: float | None, selection: bool) -> Deltas:
    """δ for a run on about ``n`` rows: given or by :func:`default_delta`; a tenth of it for
    partition selection when the run makes one."""
    if delta is None:
        delta, rule = default_delta(n)
    else:
        check_delta(delta)
        rule = "given"
    return Deltas(delta, rule, delta * SELECTION_DELTA_FRACTION if selection else 0.0)


@dataclass(frozen=True)
class DPSGDPlan:
    """The DP-SGD mechanism, fixed before training, and every event the run may spend."""

    sample_rate: float
    noise_multiplier: float
    steps_per_round: int
    rounds: int
    batch_size: int
    deltas: Deltas
    fixed_events: tuple[Event, ...]
    accountant: str

    @property
    def steps(self) -> int:
        return self.steps_per_round * self.rounds

    @property
    def sgd_event(self) -> PoissonGaussianEvent:
        return PoissonGaussianEvent(self.sample_rate, self.noise_multiplier, self.steps)

    @property
    def events(self) -> list[Event]:
        return [*self.fixed_events, self.sgd_event]

    def epsilon(self) -> float:
        return compute_epsilon(
            self.events, delta=self.deltas.accounting, accountant=self.accountant
        )


def plan_dp_sgd(
    *,
    epsilon: float,
    n: float,
    epochs: int,
    deltas: Deltas,
    batch_size: int | None = None,
    sample_rate: float | None = None,
    rounds: int = 1,
    fixed_events: Sequence[Event] = (),
    accountant: str = "pld",
) -> DPSGDPlan:
    """Plan DP-SGD on about ``n`` rows (a noisy count or a planned size, never an exact one
    that was not public): ``epochs`` expected passes per round, ``rounds`` rounds, the
    ``fixed_events`` already spent, all within ``epsilon`` at ``deltas.accounting``. The sample
    rate is ``batch_size / n`` (default batch: :func:`default_batch_size`), or ``sample_rate``
    itself when given (a data loader's ``1 / len(loader)``)."""
    check_epsilon(epsilon)
    if not (n > 0 and math.isfinite(n)):
        raise ConfigError(f"The planned number of rows must be a positive number. Found {n}.")
    if epochs < 1:
        raise ConfigError(f"Epochs must be at least 1. Found {epochs}.")
    if rounds < 1:
        raise ConfigError(f"Rounds must be at least 1. Found {rounds}.")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"Batch size must be at least 1. Found {batch_size}.")
    if deltas.accounting <= 0:
        raise ConfigError(
            f"The accounting δ must be positive; δ {deltas.delta:g} less the selection δ "
            f"{deltas.selection:g} is {deltas.accounting:g}."
        )
    if sample_rate is None:
        batch = batch_size or default_batch_size(n)
        sample_rate = min(1.0, batch / n)
    elif batch_size is not None or not (0 < sample_rate <= 1):
        raise ConfigError(
            f"Give a batch size or a sample rate in (0, 1], not both. Found {batch_size}, {sample_rate}."
        )
    else:
        batch = max(1, round(sample_rate * n))
    # epochs / q, rounded up, but not past a whole number that float division overshoots.
    steps_per_round = max(1, math.ceil(epochs / sample_rate * (1 - 1e-12)))
    sigma = calibrate_noise(
        epsilon,
        deltas.accounting,
        sample_rate,
        steps_per_round * rounds,
        fixed_events=list(fixed_events),
        accountant=accountant,
    )
    return DPSGDPlan(
        sample_rate=sample_rate,
        noise_multiplier=sigma,
        steps_per_round=steps_per_round,
        rounds=rounds,
        batch_size=batch,
        deltas=deltas,
        fixed_events=tuple(fixed_events),
        accountant=accountant,
    )


def dominates(
    reserved: Sequence[Event],
    actual: Sequence[Event],
    *,
    deltas: Sequence[float],
    accountant: str = "pld",
) -> bool:
    """Whether the reserved events compose to at least the actual ones at every given δ."""
    for delta in deltas:
        r = compute_epsilon(reserved, delta=delta, accountant=accountant)
        a = compute_epsilon(actual, delta=delta, accountant=accountant)
        if a > r * (1 + _DOMINANCE_TOLERANCE):
            return False
    return True
