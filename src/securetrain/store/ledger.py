"""The privacy budget ledger: per-dataset budgets, reservations before data is touched, and
the total privacy loss of all runs, composed with PLD (tighter than adding the epsilons).

A reservation happens inside one database transaction that locks the dataset's row (on SQLite
the whole database): read every charge, compose them with the new run's planned events, refuse
with :class:`BudgetExceeded` if the total would pass the budget, else insert. A crashed run keeps
its charge; a finished run's charge is replaced by the events that actually ran.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

from securetrain.errors import BudgetExceeded, ConfigError, DataError
from securetrain.privacy import (
    Event,
    check_delta,
    check_epsilon,
    compute_epsilon,
    dominates,
    events_from_json,
    events_to_json,
)
from securetrain.store.auditlog import append, current_actor, now, record
from securetrain.store.engine import Store, redact_url
from securetrain.store.schema import datasets, privacy_charges, runs

DEFAULT_BUDGET_EPSILON = 3.0
DEFAULT_BUDGET_DELTA = 1e-5
STATES = ("reserved", "running", "completed", "failed", "released")


@dataclass(frozen=True)
class RunCharge:
    run_id: str
    state: str
    epsilon: float
    events: list[Event]
    delta_partition_selection: float
    basis: str


@dataclass(frozen=True)
class BudgetStatus:
    dataset_id: str
    name: str
    epsilon_budget: float
    delta: float
    budget_source: str
    spent: float
    reserved: float
    remaining: float
    sum_of_epsilons: float
    runs: list[RunCharge]


def _charges(conn: Connection, dataset_id: str) -> list[RunCharge]:
    rows = conn.execute(
        select(privacy_charges, runs.c.state)
        .join(runs, runs.c.id == privacy_charges.c.run_id)
        .where(privacy_charges.c.dataset_id == dataset_id)
        .order_by(runs.c.created_at)
    ).all()
    return [
        RunCharge(
            r.run_id, r.state, r.epsilon, events_from_json(json.loads(r.events)), r.delta, r.basis
        )
        for r in rows
    ]


def composed(charges: list[RunCharge], delta: float) -> float:
    """PLD composition of the charges' events at ``delta`` less their partition-selection deltas."""
    events = [e for c in charges for e in c.events]
    remaining_delta = delta - sum(c.delta_partition_selection for c in charges)
    if not events:
        return 0.0
    if remaining_delta <= 0:
        return math.inf
    return _epsilon_of(tuple(events), remaining_delta)


@functools.lru_cache(maxsize=1024)
def _epsilon_of(events: tuple[Event, ...], delta: float) -> float:
    """Composition is a pure function of the (frozen) events: budgets polled again and again
    (the service's dashboards) are composed once per change."""
    return compute_epsilon(list(events), delta=delta)


def set_budget(
    store: Store,
    *,
    dataset_id: str,
    manifest_digest: str,
    name: str,
    epsilon: float,
    delta: float,
    source: str = "set",
) -> None:
    check_epsilon(epsilon)
    check_delta(delta)
    with store.transaction() as conn:
        store.lock_dataset(conn, dataset_id)
        existing = conn.execute(select(datasets).where(datasets.c.id == dataset_id)).first()
        values = dict(
            manifest_digest=manifest_digest,
            name=name,
            epsilon_budget=epsilon,
            delta=delta,
            budget_source=source,
        )
        if existing is None:
            conn.execute(
                insert(datasets).values(
                    id=dataset_id, owner=current_actor(), created_at=now(), **values
                )
            )
            action, previous = "budget.set", None
        else:
            conn.execute(update(datasets).where(datasets.c.id == dataset_id).values(**values))
            action = "budget.changed"
            previous = {"epsilon": existing.epsilon_budget, "delta": existing.delta}
        details = {"dataset_id": dataset_id, "epsilon": epsilon, "delta": delta, "source": source}
        append(store, conn, action, name, {**details, "previous": previous})


def status(store: Store, dataset_id: str) -> BudgetStatus:
    with store.read() as conn:
        ds = conn.execute(select(datasets).where(datasets.c.id == dataset_id)).first()
        if ds is None:
            raise DataError(
                f"No budget is set for dataset {dataset_id}; run: securetrain budget set D.sealed --epsilon E"
            )
        charges = _charges(conn, dataset_id)
    done = [c for c in charges if c.state == "completed"]
    total = composed(charges, ds.delta)
    return BudgetStatus(
        dataset_id=dataset_id,
        name=ds.name,
        epsilon_budget=ds.epsilon_budget,
        delta=ds.delta,
        budget_source=ds.budget_source,
        spent=composed(done, ds.delta),
        reserved=total,
        remaining=max(0.0, ds.epsilon_budget - total),
        sum_of_epsilons=sum(c.epsilon for c in charges),
        runs=charges,
    )


def _dataset_or_default(
    store: Store, conn: Connection, *, dataset_id: str, manifest_digest: str, name: str
) -> Row[Any]:
    """The dataset's row, inserted with the default budget (and logged) when it has none."""
    ds = conn.execute(select(datasets).where(datasets.c.id == dataset_id)).first()
    if ds is not None:
        return ds
    conn.execute(
        insert(datasets).values(
            id=dataset_id,
            manifest_digest=manifest_digest,
            name=name,
            owner=current_actor(),
            epsilon_budget=DEFAULT_BUDGET_EPSILON,
            delta=DEFAULT_BUDGET_DELTA,
            budget_source="default",
            created_at=now(),
        )
    )
    append(
        store,
        conn,
        "budget.default",
        name,
        {
            "dataset_id": dataset_id,
            "epsilon": DEFAULT_BUDGET_EPSILON,
            "delta": DEFAULT_BUDGET_DELTA,
        },
    )
    return conn.execute(select(datasets).where(datasets.c.id == dataset_id)).one()


def _refusal(
    name: str, *, budget: float, delta: float, spent: float, requested: float, total: float
) -> str:
    """Why a reservation of ``requested`` ε is refused: ``spent`` of ``budget`` is spent or
    reserved, and the new run would bring the composed total to ``total``."""
    return (
        f"Privacy budget of {name} exceeded: spent or reserved ε = {spent:.4f} of "
        f"{budget:g} (δ = {delta:g}), remaining {max(0.0, budget - spent):.4f}; "
        f"this run requests ε = {requested:g}, which would bring the total to {total:.4f}."
    )


def _insert_reservation(
    store: Store,
    conn: Connection,
    charge: RunCharge,
    *,
    dataset_id: str,
    name: str,
    parameters: dict[str, Any],
    total: float,
) -> None:
    """The run (``reserved``), its planned charge, and the audit log entry."""
    ts = now()
    conn.execute(
        insert(runs).values(
            id=charge.run_id,
            dataset_id=dataset_id,
            state="reserved",
            actor=current_actor(),
            parameters=json.dumps(parameters),
            created_at=ts,
            updated_at=ts,
        )
    )
    conn.execute(
        insert(privacy_charges).values(
            run_id=charge.run_id,
            dataset_id=dataset_id,
            events=json.dumps(events_to_json(charge.events)),
            epsilon=charge.epsilon,
            delta=charge.delta_partition_selection,
            basis="planned",
        )
    )
    append(
        store,
        conn,
        "run.reserved",
        name,
        {
            "run_id": charge.run_id,
            "dataset_id": dataset_id,
            "epsilon": charge.epsilon,
            "total_after": total,
        },
    )


def reserve(
    store: Store,
    *,
    dataset_id: str,
    manifest_digest: str,
    name: str,
    events: list[Event],
    epsilon: float,
    delta_partition_selection: float,
    parameters: dict[str, Any],
) -> str:
    """Reserve a run's planned privacy loss; :class:`BudgetExceeded` if it does not fit."""
    run_id = uuid.uuid4().hex
    refusal: str | None = None
    with store.transaction() as conn:
        store.lock_dataset(conn, dataset_id)
        ds = _dataset_or_default(
            store, conn, dataset_id=dataset_id, manifest_digest=manifest_digest, name=name
        )
        before = _charges(conn, dataset_id)
        planned = RunCharge(
            run_id, "reserved", epsilon, events, delta_partition_selection, "planned"
        )
        spent = composed(before, ds.delta)
        total = composed([*before, planned], ds.delta)
        if total > ds.epsilon_budget:
            refusal = _refusal(
                name,
                budget=ds.epsilon_budget,
                delta=ds.delta,
                spent=spent,
                requested=epsilon,
                total=total,
            )
        else:
            _insert_reservation(
                store,
                conn,
                planned,
                dataset_id=dataset_id,
                name=name,
                parameters=parameters,
                total=total,
            )
    if refusal is not None:
        record(store, "run.refused", name, {"dataset_id": dataset_id, "requested_epsilon": epsilon})
        raise BudgetExceeded(refusal)
    return run_id


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    dataset_id: str
    state: str
    parameters: dict[str, Any]


def get_run(store: Store, run_id: str) -> RunRecord:
    with store.read() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
    if row is None:
        raise DataError(f"No run {run_id!r} in the store {redact_url(store.url)!r}.")
    return RunRecord(row.id, row.dataset_id, row.state, json.loads(row.parameters))


def transition(
    store: Store,
    run_id: str,
    state: str,
    *,
    events: list[Event] | None = None,
    epsilon: float | None = None,
    delta_partition_selection: float | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Move a run to ``state``. ``released`` drops its charge (allowed only from ``reserved``,
    before any data was decrypted); a ``completed`` run never changes again; ``completed``
    replaces the reserved events with those that ran, but only if the reservation dominates them
    (at the dataset's δ): a run that spent more than it reserved keeps its reservation, is marked
    failed, and :class:`BudgetExceeded` is raised."""
    if state not in STATES:
        raise ConfigError(f"Run state must be one of {', '.join(STATES)}. Found {state!r}.")
    overrun: str | None = None
    with store.transaction() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise DataError(f"No run {run_id!r} in the store.")
        store.lock_dataset(conn, row.dataset_id)
        if row.state == "completed" or (state == "released" and row.state != "reserved"):
            raise ConfigError(
                f"Run {run_id} is {row.state}; it cannot become {state} "
                "(only a reserved run can be released, and a completed run is final)."
            )
        if state == "completed" and events is not None:
            overrun = _overrun(conn, row.dataset_id, run_id, events, delta_partition_selection)
            if overrun is not None:
                state, details = "failed", {**(details or {}), "overrun": overrun}
        conn.execute(update(runs).where(runs.c.id == run_id).values(state=state, updated_at=now()))
        if state == "released":
            conn.execute(delete(privacy_charges).where(privacy_charges.c.run_id == run_id))
        elif events is not None and overrun is None:
            conn.execute(
                update(privacy_charges)
                .where(privacy_charges.c.run_id == run_id)
                .values(
                    events=json.dumps(events_to_json(events)),
                    epsilon=epsilon,
                    delta=delta_partition_selection,
                    basis="actual",
                )
            )
        append(store, conn, f"run.{state}", row.dataset_id, {"run_id": run_id, **(details or {})})
    if overrun is not None:
        raise BudgetExceeded(f"Run {run_id} spent more than it reserved: {overrun}")


def _overrun(
    conn: Connection,
    dataset_id: str,
    run_id: str,
    actual: list[Event],
    actual_selection_delta: float | None,
) -> str | None:
    """Why the actual events exceed the run's reservation, or None when they do not."""
    ds = conn.execute(select(datasets).where(datasets.c.id == dataset_id)).one()
    charge = conn.execute(select(privacy_charges).where(privacy_charges.c.run_id == run_id)).first()
    if charge is None:
        return "it has no reservation"
    if (actual_selection_delta or 0.0) > charge.delta:
        return f"partition-selection δ {actual_selection_delta:g} exceeds the reserved {charge.delta:g}"
    reserved = events_from_json(json.loads(charge.events))
    delta = ds.delta - charge.delta
    if delta <= 0:
        return None
    if not dominates(reserved, actual, deltas=[delta]):
        return (
            f"ε {compute_epsilon(actual, delta=delta):.4f} exceeds the reserved "
            f"{compute_epsilon(reserved, delta=delta):.4f} at δ = {delta:g}"
        )
    return None
