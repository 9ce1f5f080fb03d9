"""A reservation and the run under it cannot disagree: one planner, and the ledger checks."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securetrain import TrainConfig, train
from securetrain.crypto import generate_keyset, provider_for_keydir
from securetrain.data import Schema, from_table
from securetrain.errors import BudgetExceeded, ConfigError, DataError, SecurityError
from securetrain.privacy import PoissonGaussianEvent, compute_epsilon, dominates
from securetrain.sealed import seal_table, verify_sealed
from securetrain.store import Store, ledger
from securetrain.train import parse_sealed, reserve_sealed, resolve_keys, train_reserved
from securetrain.train.plan import make_plan, plan_mechanism, run_events
from securetrain.train.trainer import apply_classes


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pa.table(
        {
            "x": x,
            "city": rng.choice(["a", "b", "c"], n).tolist(),
            "y": np.where(x + rng.normal(size=n) > 0, "yes", "no").tolist(),
        }
    )


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(400, 30_000),
    epsilon=st.floats(0.3, 8.0),
    delta=st.one_of(st.none(), st.sampled_from([1e-4, 1e-6, 1e-8])),
    declared=st.booleans(),
    test_fraction=st.sampled_from([0.2, 0.3, 0.5]),
    seed=st.integers(0, 1000),
)
def test_reserved_events_compose_to_at_least_the_actual_ones(
    n, epsilon, delta, declared, test_fraction, seed
) -> None:
    """The reservation is planned from the header's row count; the run releases its noisy count
    and fits preprocessing on real rows; whatever it spends is dominated by the reservation."""
    schema = (
        Schema(
            bounds={"x": (-5.0, 5.0)}, categories={"city": ["a", "b", "c"]}, classes=["no", "yes"]
        )
        if declared
        else None
    )
    table = _table(n, seed)
    data = from_table(table, label="y", source="t", sha256="", schema=schema)
    config = TrainConfig(
        data="t",
        out=Path("unused"),
        epsilon=epsilon,
        delta=delta,
        test_fraction=test_fraction,
        classes=["no", "yes"],
    )
    data = apply_classes(config, data)
    like = apply_classes(
        config,
        from_table(table.schema.empty_table(), label="y", source="t", sha256="", schema=schema),
    )
    reserved = plan_mechanism(config, like, n=max(1.0, n * (1 - test_fraction)))
    plan, _, _ = make_plan(config, data, reserved=reserved)
    actual = run_events(plan)
    deltas = [reserved.accounting_delta, 1e-5, 1e-9]
    assert dominates(reserved.events(), actual, deltas=deltas)
    assert plan.preprocessor.dp.partition_selection_delta <= reserved.selection_delta
    assert compute_epsilon(actual, delta=reserved.accounting_delta) <= epsilon * (1 + 1e-9)


def _reserve(store: Store, events: list) -> str:  # type: ignore[type-arg]
    return ledger.reserve(
        store,
        dataset_id="d1",
        manifest_digest="m",
        name="d1",
        events=events,
        epsilon=1.0,
        delta_partition_selection=0.0,
        parameters={},
    )


def test_completing_with_more_than_was_reserved_is_refused_and_the_charge_kept(
    tmp_path: Path, store_url: str
) -> None:
    store = Store(store_url)
    ledger.set_budget(
        store, dataset_id="d1", manifest_digest="m", name="d1", epsilon=100.0, delta=1e-5
    )
    reserved = [PoissonGaussianEvent(0.1, 1.0, 100)]
    run_id = _reserve(store, reserved)
    bigger = [PoissonGaussianEvent(0.1, 1.0, 400)]
    with pytest.raises(BudgetExceeded, match="spent more than it reserved"):
        ledger.transition(
            store, run_id, "completed", events=bigger, epsilon=2.0, delta_partition_selection=0.0
        )
    status = ledger.status(store, "d1")
    (charge,) = status.runs
    assert charge.state == "failed" and charge.basis == "planned" and charge.events == reserved
    smaller = [PoissonGaussianEvent(0.1, 1.2, 100)]
    run2 = _reserve(store, reserved)
    ledger.transition(
        store, run2, "completed", events=smaller, epsilon=0.8, delta_partition_selection=0.0
    )
    assert [c.basis for c in ledger.status(store, "d1").runs] == ["planned", "actual"]


def test_a_parse_error_after_decryption_keeps_the_charge(tmp_path: Path) -> None:
    """The label column has a missing value: the run fails after decrypting, and the charge
    stays (it was released before, which made every such error free to repeat)."""
    keys_dir = tmp_path / "keys"
    paths = generate_keyset(keys_dir)
    table = _table(300, 1)
    labels = table.column("y").to_pylist()
    labels[7] = None
    table = table.set_column(2, "y", pa.array(labels))
    sealed = tmp_path / "d.sealed"
    seal_table(
        table,
        sealed,
        keys=provider_for_keydir(keys_dir, None),
        signing_key=paths.signing_key,
        label="y",
    )
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    config = TrainConfig(
        data=str(sealed),
        out=tmp_path / "b",
        epsilon=1.0,
        key_dir=keys_dir,
        store=store_url,
        classes=["no", "yes"],
    )
    with pytest.raises(DataError, match="missing value"):
        train(config)
    header = verify_sealed(sealed, paths.public_key).header
    (charge,) = ledger.status(Store(store_url), header.dataset_id).runs
    assert charge.state == "failed" and charge.epsilon == 1.0
    assert not (tmp_path / "b").exists()


def test_a_released_or_completed_run_cannot_be_released_again(store_url: str) -> None:
    """Releasing deletes a charge, so only a reserved run may be released; a completed run is
    final (otherwise a failure path replayed on a finished run would refund its ε)."""
    store = Store(store_url)
    ledger.set_budget(
        store, dataset_id="d1", manifest_digest="m", name="d1", epsilon=100.0, delta=1e-5
    )
    events = [PoissonGaussianEvent(0.1, 1.0, 100)]
    done = _reserve(store, events)
    ledger.transition(store, done, "running")
    ledger.transition(
        store, done, "completed", events=events, epsilon=1.0, delta_partition_selection=0.0
    )
    failed = _reserve(store, events)
    ledger.transition(store, failed, "failed")
    for run_id, state in ((done, "released"), (done, "failed"), (failed, "released")):
        with pytest.raises(ConfigError, match="cannot become"):
            ledger.transition(store, run_id, state)
    assert {c.run_id: c.state for c in ledger.status(store, "d1").runs} == {
        done: "completed",
        failed: "failed",
    }


def test_a_sealed_file_that_no_longer_verifies_releases_its_reservation(tmp_path: Path) -> None:
    """Between reservation and training the file is replaced by one that fails verification:
    nothing was decrypted, so the reservation is released (it used to stay reserved forever),
    and the same run id cannot be trained again."""
    keys_dir = tmp_path / "keys"
    paths = generate_keyset(keys_dir)
    sealed = tmp_path / "d.sealed"
    seal_table(
        _table(300, 2),
        sealed,
        keys=provider_for_keydir(keys_dir, None),
        signing_key=paths.signing_key,
        label="y",
    )
    config = TrainConfig(
        data=str(sealed),
        out=tmp_path / "b",
        epsilon=1.0,
        key_dir=keys_dir,
        store=f"sqlite:///{tmp_path / 'store.db'}",
        classes=["no", "yes"],
    )
    keys = resolve_keys(config)
    header = verify_sealed(sealed, paths.public_key).header
    source = parse_sealed(config.data)
    store = Store(config.store)
    run_id = reserve_sealed(config, keys, source, store=store)
    chunk = max((p for p in sealed.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    blob = bytearray(chunk.read_bytes())
    blob[-1] ^= 1
    chunk.write_bytes(bytes(blob))
    with pytest.raises(SecurityError):
        train_reserved(config, keys, source, run_id, None, store=store)
    assert ledger.get_run(store, run_id).state == "released"
    assert ledger.status(store, header.dataset_id).runs == []
    with pytest.raises(ConfigError, match="only a reserved run"):
        train_reserved(config, keys, source, run_id, None, store=store)
    assert not (tmp_path / "b").exists()
