"""The one DP-SGD planner: its rules, and that it works at every table size."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.errors import ConfigError
from securetrain.privacy import (
    GaussianEvent,
    PoissonGaussianEvent,
    compute_epsilon,
    default_delta,
    dominates,
    plan_deltas,
    plan_dp_sgd,
)


@pytest.mark.parametrize(
    ("n", "epochs"),
    [(100, 2), (1_000, 2), (14_000, 2), (20_000, 2), (99_999, 2), (10**6, 1), (10**7, 1)],
)
def test_selection_delta_is_a_fraction_of_the_runs_own_delta(n: int, epochs: int) -> None:
    """With the default δ, the partition-selection δ never eats the run's δ (it did at 10^4+
    rows, where both were 1e-6 and the accounting δ became ≤ 0)."""
    deltas = plan_deltas(n=n, delta=None, selection=True)
    assert deltas.delta < 1 / n
    assert deltas.selection == pytest.approx(deltas.delta / 10)
    assert 0 < deltas.accounting < deltas.delta
    plan = plan_dp_sgd(
        epsilon=1.0,
        n=n,
        epochs=epochs,
        deltas=deltas,
        fixed_events=[GaussianEvent(30.0, 5)],
    )
    assert plan.epsilon() <= 1.0
    assert plan.steps == math.ceil(epochs / plan.sample_rate * (1 - 1e-12))


def test_default_delta_known_answers() -> None:
    assert default_delta(569)[0] == 1e-5
    assert default_delta(20_000)[0] == 1e-6
    assert default_delta(35_000)[0] == 1e-6
    assert default_delta(10**7)[0] == 1e-8


def test_steps_rule_is_ceil_epochs_over_q_times_rounds() -> None:
    deltas = plan_deltas(n=1000, delta=1e-5, selection=False)
    plan = plan_dp_sgd(epsilon=2.0, n=1000, epochs=3, deltas=deltas, batch_size=300, rounds=4)
    assert plan.sample_rate == pytest.approx(0.3)
    assert plan.steps_per_round == 10 and plan.steps == 40
    loader = plan_dp_sgd(epsilon=2.0, n=1000, epochs=3, deltas=deltas, sample_rate=1 / 7)
    assert loader.steps == 21


def test_default_batch_is_a_third_between_32_and_1024() -> None:
    deltas = plan_deltas(n=1000, delta=1e-5, selection=False)
    for n, batch in [(60, 32), (900, 300), (90_000, 1024)]:
        assert plan_dp_sgd(epsilon=1.0, n=n, epochs=1, deltas=deltas).batch_size == batch


def test_accounting_delta_must_be_positive() -> None:
    from securetrain.privacy.planner import Deltas

    with pytest.raises(ConfigError, match="accounting δ must be positive"):
        plan_dp_sgd(epsilon=1.0, n=100, epochs=1, deltas=Deltas(1e-6, "given", 1e-6))


@settings(max_examples=10, deadline=None)
@given(
    q=st.floats(0.001, 0.2),
    sigma=st.floats(1.0, 5.0),
    steps=st.integers(1, 500),
    more_q=st.floats(1.0, 1.5),
    less_sigma=st.floats(0.85, 1.0),
    more_steps=st.integers(0, 100),
)
def test_dominates_holds_for_a_larger_mechanism_and_fails_the_other_way(
    q, sigma, steps, more_q, less_sigma, more_steps
) -> None:
    small = [PoissonGaussianEvent(q, sigma, steps)]
    big = [PoissonGaussianEvent(min(1.0, q * more_q), sigma * less_sigma, steps + more_steps)]
    assert dominates(big, small, deltas=[1e-5, 1e-8])
    if compute_epsilon(big, delta=1e-5) > compute_epsilon(small, delta=1e-5) * 1.001:
        assert not dominates(small, big, deltas=[1e-5])
