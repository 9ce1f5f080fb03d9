"""Audit statistics against known values and their defining properties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from securetrain.attacks.stats import (
    one_run_epsilon_lower_bound,
    one_run_p_value,
    roc_summary,
    tpr_ceiling,
)
from securetrain.errors import ConfigError


@pytest.mark.parametrize(("r", "expected"), [(100, 3.49), (1000, 5.81)])
def test_perfect_guessing_gives_the_papers_bounds(r: int, expected: float) -> None:
    assert one_run_epsilon_lower_bound(r, r, r) == pytest.approx(expected, abs=0.005)


def test_the_bound_is_where_the_binomial_tail_crosses_five_percent() -> None:
    eps = one_run_epsilon_lower_bound(1000, 200, 150)
    q = 1 / (1 + math.exp(-eps))
    assert stats.binom.sf(149, 200, q) == pytest.approx(0.05, rel=1e-3)


def test_chance_level_guessing_bounds_nothing() -> None:
    assert one_run_epsilon_lower_bound(1000, 200, 100) == 0.0
    assert one_run_epsilon_lower_bound(10, 0, 0) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(1, 400),
    frac=st.floats(0.5, 1.0),
    delta=st.sampled_from([0.0, 1e-6, 1e-4]),
)
def test_the_bound_falls_with_delta_and_rises_with_correct_guesses(
    r: int, frac: float, delta: float
) -> None:
    m = 2 * r
    v = int(round(frac * r))
    bound = one_run_epsilon_lower_bound(m, r, v, delta=delta)
    assert bound <= one_run_epsilon_lower_bound(m, r, v, delta=0.0) + 1e-6
    if v < r:
        assert bound <= one_run_epsilon_lower_bound(m, r, v + 1, delta=delta) + 1e-6
    # The p-value at the bound is the confidence level: the defining property.
    if 0 < bound < math.inf:
        assert one_run_p_value(m, r, v, bound, delta) <= 0.05 + 1e-6


def test_the_delta_term_matches_its_definition() -> None:
    m, r, v, eps, delta = 100, 50, 40, 1.0, 1e-3
    q = 1 / (1 + math.exp(-eps))
    alpha = max(
        sum(stats.binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i for i in range(1, v + 1)
    )
    expected = stats.binom.sf(v - 1, r, q) + 2 * m * delta * alpha
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-9)


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ConfigError, match="Found 5, 4, 10"):
        one_run_p_value(10, 4, 5, 1.0)


def test_roc_summary_of_a_perfect_and_a_useless_attack() -> None:
    members = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    perfect = roc_summary(members.astype(float), members)
    assert perfect["auc"] == 1.0 and perfect["balanced_accuracy"] == 1.0
    assert perfect["tpr_at_fpr"] == {"0.001": 1.0, "0.01": 1.0}
    rng = np.random.default_rng(0)
    useless = roc_summary(rng.normal(size=1000), members)
    assert abs(useless["auc"] - 0.5) < 0.06
    assert useless["tpr_at_fpr"]["0.01"] < 0.05
    with pytest.raises(ConfigError, match="Found 500 members among 500"):
        roc_summary(np.zeros(500), np.ones(500, bool))


def test_tpr_ceiling() -> None:
    fpr = np.array([0.0, 0.01, 0.5, 1.0])
    np.testing.assert_allclose(tpr_ceiling(fpr, 1.0, 1e-5), [1e-5, math.e * 0.01 + 1e-5, 1.0, 1.0])


def test_canary_guesses_use_the_declared_k_with_bonferroni() -> None:
    from securetrain.attacks.canary import bound_from_scores, guess_sizes

    assert guess_sizes(100) == [5, 10, 25]
    assert guess_sizes(8) == [1, 2]
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    perfect = np.where(included, 1.0, 0.0) + rng.normal(0, 1e-3, 1000)
    bound, k, guesses, correct = bound_from_scores(
        perfect, included, k_values=[50, 100, 250], delta=0.0
    )
    assert (k, guesses, correct) == (250, 500, 500)
    # Three declared k: each is tested at 1 - 0.05/3, so the bound is below the uncorrected one.
    assert bound == pytest.approx(
        one_run_epsilon_lower_bound(1000, 500, 500, confidence=1 - 0.05 / 3), abs=1e-6
    )
    assert bound < one_run_epsilon_lower_bound(1000, 500, 500)
    noise = rng.normal(size=1000)
    assert bound_from_scores(noise, included, k_values=[50, 100, 250], delta=0.0)[0] < 0.5
    with pytest.raises(ConfigError, match=r"k <= 5\. Found \[6\]"):
        bound_from_scores(noise[:10], included[:10], k_values=[6], delta=0.0)


def test_a_lower_bound_above_the_claim_is_flagged() -> None:
    from securetrain.attacks.privacy_audit import broken_claim

    assert broken_claim(0.4, 1.0) is None
    assert broken_claim(1.0, 1.0) is None
    assert broken_claim(2.04, None) is None  # nothing was claimed (no DP)
    warning = broken_claim(1.2, 1.0)
    assert warning is not None
    assert "ε ≥ 1.200 exceeds the claimed ε = 1.000" in warning and "Do not release" in warning


def test_membership_section_headlines_the_strongest_attack_rounded() -> None:
    from securetrain.attacks.privacy_audit import _mia_doc

    def attack(auc: float) -> dict:
        return {
            "auc": auc,
            "tpr_at_fpr": {"0.01": 0.123456},
            "balanced_accuracy": 0.55556,
            "roc": {},
        }

    doc = _mia_doc(
        {"loss": attack(0.61234), "lira-offline": attack(0.7)},
        members=10,
        non_members=8,
        reference_models=4,
        population_rows=8,
    )
    assert doc["attack"] == "lira-offline"
    assert doc["auc"] == 0.7
    assert (doc["tpr_at_fpr"], doc["balanced_accuracy"]) == ({"0.01": 0.1235}, 0.5556)
    assert doc["attacks"]["loss"] == {
        "auc": 0.6123,
        "tpr_at_fpr": {"0.01": 0.1235},
        "balanced_accuracy": 0.5556,
    }
    assert (doc["members"], doc["non_members"], doc["population_rows"]) == (10, 8, 8)


def test_an_incomplete_dp_sgd_card_is_refused_by_name_not_crashed_on() -> None:
    from types import SimpleNamespace

    from securetrain.attacks.privacy_audit import _dp_plan
    from securetrain.bundle.card import PrivacySection
    from securetrain.errors import DataError

    fields = dict(
        mechanism="dp-sgd",
        epsilon=1.0,
        delta=1e-5,
        accountant="pld",
        noise_multiplier=1.1,
        sample_rate=0.01,
        steps=100,
        max_grad_norm=1.0,
        expected_batch_size=5.0,
        sampling="poisson",
        secure_rng=True,
        events=[],
    )
    card = SimpleNamespace(privacy=PrivacySection(**fields))
    plan = _dp_plan(card, n=1000)
    assert plan is not None and plan.expected_batch_size == pytest.approx(10.0)
    card = SimpleNamespace(privacy=PrivacySection(**{**fields, "sample_rate": None}))
    with pytest.raises(DataError, match=r"incomplete\. Found sample_rate=None, noise"):
        _dp_plan(card)


def test_a_card_without_a_held_out_split_is_refused_by_name(monkeypatch) -> None:
    from types import SimpleNamespace

    from securetrain.attacks import privacy_audit
    from securetrain.bundle.card import SplitSection
    from securetrain.errors import DataError

    monkeypatch.setattr(privacy_audit, "check_identity", lambda *args, **kwargs: None)
    card = SimpleNamespace(
        data=SimpleNamespace(identity=None, screening=None, split=SplitSection(method="none"))
    )
    with pytest.raises(DataError, match=r"no held-out split to audit against\. Found method"):
        privacy_audit._membership(card, None, None)
