"""The budget ledger on SQLite and on a real PostgreSQL server."""

import multiprocessing as mp

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

from securetrain.errors import BudgetExceeded
from securetrain.privacy import GaussianEvent, PoissonGaussianEvent, calibrate_noise
from securetrain.store import Store, ledger

Q, STEPS = 0.3, 84
SIGMA_EPS1 = calibrate_noise(1.0, 1e-5, Q, STEPS)


def run_events() -> list:
    return [PoissonGaussianEvent(Q, SIGMA_EPS1, STEPS)]


def _setup(url: str, budget: float) -> None:
    ledger.set_budget(
        Store(url),
        dataset_id="ds1",
        manifest_digest="sha256:00",
        name="d.sealed",
        epsilon=budget,
        delta=1e-5,
    )


def _reserve(store: Store, dataset_id: str = "ds1") -> str:
    return ledger.reserve(
        store,
        dataset_id=dataset_id,
        manifest_digest="sha256:00",
        name="d.sealed",
        events=run_events(),
        epsilon=1.0,
        delta_partition_selection=0.0,
        parameters={},
    )


def _try_reserve(url: str) -> bool:
    try:
        _reserve(Store(url))
        return True
    except BudgetExceeded:
        return False


def test_pld_composition_of_runs_equals_dp_accounting(store_url: str) -> None:
    _setup(store_url, 100.0)
    k = 4
    for _ in range(k):
        assert _try_reserve(store_url)
    status = ledger.status(Store(store_url), "ds1")
    acc = pld_privacy_accountant.PLDAccountant()
    acc.compose(dp_event.PoissonSampledDpEvent(Q, dp_event.GaussianDpEvent(SIGMA_EPS1)), STEPS * k)
    assert status.reserved == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    assert status.sum_of_epsilons == pytest.approx(4.0)
    assert status.reserved < status.sum_of_epsilons  # tighter than adding up
    assert status.spent == 0.0  # nothing completed yet


def test_sequential_reservations_stop_at_the_budget(store_url: str) -> None:
    _setup(store_url, 2.0)
    admitted = [_try_reserve(store_url) for _ in range(5)]
    assert admitted == [True, True, True, False, False]  # PLD: three runs at ε=1 compose to ~1.8
    status = ledger.status(Store(store_url), "ds1")
    assert 1.7 < status.reserved <= 2.0


def test_concurrent_processes_cannot_overspend(store_url: str) -> None:
    budget = 3.0
    sequential_url = store_url  # the same reservations, one after another, on a fresh dataset
    ledger.set_budget(
        Store(sequential_url),
        dataset_id="seq",
        manifest_digest="sha256:01",
        name="seq.sealed",
        epsilon=budget,
        delta=1e-5,
    )
    expected = 0
    for _ in range(8):
        try:
            _reserve(Store(sequential_url), "seq")
            expected += 1
        except BudgetExceeded:
            pass
    _setup(store_url, budget)
    with mp.get_context("spawn").Pool(8) as pool:
        admitted = sum(pool.map(_try_reserve, [store_url] * 8))
    assert admitted == expected and 0 < expected < 8
    status = ledger.status(Store(store_url), "ds1")
    assert status.reserved <= budget
    assert len(status.runs) == admitted


def test_completed_run_replaces_plan_with_actual_events_and_crash_keeps_reservation(
    store_url: str,
) -> None:
    _setup(store_url, 10.0)
    store = Store(store_url)
    a = _reserve(store)
    b = _reserve(store)
    ledger.transition(store, a, "running")
    actual = [GaussianEvent(50.0, 2), PoissonGaussianEvent(0.29, SIGMA_EPS1 * 1.01, 88)]
    ledger.transition(
        store, a, "completed", events=actual, epsilon=0.99, delta_partition_selection=0.0
    )
    ledger.transition(store, b, "running")  # then the process dies: b stays charged
    status = ledger.status(store, "ds1")
    states = {r.run_id: (r.state, r.basis) for r in status.runs}
    assert states == {a: ("completed", "actual"), b: ("running", "planned")}
    assert status.reserved > status.spent > 0
    c = _reserve(store)
    ledger.transition(store, c, "released")  # refused before any decryption: no charge
    assert {r.run_id for r in ledger.status(store, "ds1").runs} == {a, b}


def test_refusal_message_gives_spent_remaining_and_requested(store_url: str) -> None:
    _setup(store_url, 0.5)
    with pytest.raises(
        BudgetExceeded,
        match=r"spent or reserved ε = 0\.0000 of 0\.5.*remaining 0\.5000.*requests ε = 1",
    ):
        _reserve(Store(store_url))
