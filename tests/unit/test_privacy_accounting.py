"""Accounting against dp_accounting, and noise calibration."""

import math

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.errors import ConfigError
from securetrain.privacy import (
    GaussianEvent,
    PoissonGaussianEvent,
    calibrate_gaussian,
    calibrate_noise,
    compute_epsilon,
    events_from_json,
    events_to_json,
)


def reference_pld(
    q: float, sigma: float, steps: int, delta: float, extra_sigma: float | None = None
) -> float:
    acc = pld_privacy_accountant.PLDAccountant()
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    if extra_sigma is not None:
        acc.compose(dp_event.GaussianDpEvent(extra_sigma), 2)
    return acc.get_epsilon(delta)


@settings(max_examples=8, deadline=None)
@given(
    q=st.floats(0.001, 1.0),
    sigma=st.floats(0.6, 8.0),
    steps=st.integers(1, 1500),
    delta=st.sampled_from([1e-5, 1e-6, 1e-3]),
)
def test_epsilon_equals_dp_accounting_pld(q: float, sigma: float, steps: int, delta: float) -> None:
    ours = compute_epsilon([PoissonGaussianEvent(q, sigma, steps)], delta=delta)
    assert ours == pytest.approx(reference_pld(q, sigma, steps, delta), rel=1e-9)


def test_composition_with_preprocessing_events_equals_dp_accounting() -> None:
    events = [GaussianEvent(30.0, 2), PoissonGaussianEvent(0.05, 1.1, 400)]
    assert compute_epsilon(events, delta=1e-5) == pytest.approx(
        reference_pld(0.05, 1.1, 400, 1e-5, extra_sigma=30.0), rel=1e-9
    )


def test_rdp_on_request_equals_dp_accounting_rdp_and_is_looser() -> None:
    event = PoissonGaussianEvent(0.01, 1.0, 1000)
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(1.0)), 1000)
    rdp = compute_epsilon([event], delta=1e-5, accountant="rdp")
    assert rdp == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert rdp > compute_epsilon([event], delta=1e-5)


@pytest.mark.parametrize(
    ("target", "delta", "q", "steps"),
    [
        (1.0, 1e-5, 0.3, 30),
        (0.5, 1e-6, 0.01, 2000),
        (8.0, 1e-5, 0.004, 10_000),
        (3.0, 1e-5, 1.0, 5),
        (30.0, 1e-5, 0.3, 75),
        (100.0, 1e-5, 0.33, 75),
    ],
)
def test_calibrated_sigma_is_the_smallest_within_one_percent(target, delta, q, steps) -> None:
    sigma = calibrate_noise(target, delta, q, steps)
    assert reference_pld(q, sigma, steps, delta) <= target
    assert reference_pld(q, sigma / 1.01, steps, delta) > target


def test_calibration_accounts_for_fixed_events() -> None:
    fixed = [GaussianEvent(20.0, 2)]
    alone = calibrate_noise(1.0, 1e-5, 0.1, 200)
    shared = calibrate_noise(1.0, 1e-5, 0.1, 200, fixed_events=fixed)
    assert shared > alone
    total = compute_epsilon([*fixed, PoissonGaussianEvent(0.1, shared, 200)], delta=1e-5)
    assert 0.99 * 1.0 <= total <= 1.0


def test_gaussian_calibration() -> None:
    sigma = calibrate_gaussian(0.1, 1e-5, count=3)
    assert compute_epsilon([GaussianEvent(sigma, 3)], delta=1e-5) <= 0.1
    assert compute_epsilon([GaussianEvent(sigma / 1.01, 3)], delta=1e-5) > 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": 0.0}, "Epsilon must be"),
        ({"target_epsilon": -1.0}, "Epsilon must be"),
        ({"delta": 0.0}, "Delta must be"),
        ({"delta": 1.0}, "Delta must be"),
        ({"sample_rate": 0.0}, "Sampling rate must be in (0, 1]. Found 0.0."),
        ({"sample_rate": 1.5}, "Sampling rate must be in (0, 1]. Found 1.5."),
        ({"steps": 0}, "Number of steps"),
    ],
)
def test_calibration_rejects_invalid_parameters(kwargs, message) -> None:
    args = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10} | kwargs
    with pytest.raises(
        ConfigError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        calibrate_noise(**args)


def test_events_round_trip_through_json() -> None:
    events = [GaussianEvent(12.5, 3), PoissonGaussianEvent(0.25, 1.7, 99)]
    assert events_from_json(events_to_json(events)) == events
    with pytest.raises(ConfigError, match="Unknown DP mechanism"):
        events_from_json([{"mechanism": "laplace", "count": 1}])


def test_no_events_spend_nothing() -> None:
    assert compute_epsilon([], delta=1e-5) == 0.0
    assert math.isfinite(compute_epsilon([GaussianEvent(1.0)], delta=1e-5))
