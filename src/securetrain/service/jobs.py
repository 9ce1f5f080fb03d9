"""Jobs: training jobs submitted by analysts, approved by owners (or automatically within
budget), run by a worker process, never in a request handler.

A training job's ε is reserved in the ledger when it is submitted (from the sealed header
alone, nothing decrypted). Rejecting or cancelling it before it runs releases the reservation;
once the worker (:mod:`securetrain.service.worker`) has decrypted the data, the charge stays,
whatever happens next.

An audit job audits the bundle of a finished training job on the same dataset. Its results are
exact statistics over the training rows (membership counts, ROC curves, retrained models), not
DP releases: only the dataset's owner and auditors start audits and read them. For the same
reason an analyst sees a failed job's reason only as a generic message; the error's text, which
may describe the data, goes to the owner and auditors.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Row, func, insert, select, update

from securetrain.errors import AccessDenied, ConfigError
from securetrain.service.registry import (
    Dataset,
    Forbidden,
    NotVisible,
    get_visible,
    owner_key_path,
    resolve_data_path,
    visible,
)
from securetrain.service.roles import (
    AUDITORS,
    Role,
    User,
    may_cancel,
    may_decide,
    sees_failure_reasons,
    sees_job,
)
from securetrain.service.settings import ServiceSettings
from securetrain.store import Store, ledger
from securetrain.store.auditlog import acting_as, append, now
from securetrain.store.schema import jobs, service_datasets

if TYPE_CHECKING:
    from securetrain.train import TrainConfig

OPEN = ("awaiting_approval", "queued")
UNDECRYPTED = ("reserved", "released")  # ledger states of a run that decrypted nothing
FAILED_AFTER_DECRYPTION = (
    "The job failed after the data was decrypted, and its charge stays; the dataset's owner "
    "can see the reason."
)
FAILED_BEFORE_DECRYPTION = (
    "The job failed before any data was decrypted; the dataset's owner can see the reason."
)
JOB_DAY = timedelta(hours=24)  # the window of a dataset's jobs-per-analyst limit


class LimitReached(AccessDenied):
    """The analyst has submitted as many jobs on the dataset as its owner allows in a day (HTTP
    429)."""


class JobRequest(BaseModel):
    """What an analyst asks for. Training settings are those of ``securetrain train``."""

    model_config = ConfigDict(extra="forbid")
    dataset_id: str = Field(min_length=1, max_length=64)
    kind: Literal["train", "audit"] = "train"
    epsilon: float | None = Field(default=None, gt=0, le=100)
    model: Literal["auto", "logreg", "mlp"] = "auto"
    epochs: int | None = Field(default=None, ge=1, le=1000)
    classes: list[str] | None = Field(default=None, min_length=2, max_length=100)
    train_job: str | None = Field(default=None, max_length=32)
    canaries: int = Field(default=0, ge=0, le=1000)


@dataclass
class Job:
    id: str
    kind: str
    dataset_id: str
    submitter: str
    state: str
    params: dict
    epsilon: float
    run_id: str | None
    parent: str | None
    progress: float
    log: str
    error: str | None
    created_at: str
    updated_at: str


def view(store: Store, user: User, job: Job) -> dict:
    """The job as ``user`` may see it: analysts get a failure's reason only as a generic
    message, since it may describe the decrypted data (a count of missing labels, say)."""
    error = job.error
    if error is not None and not sees_failure_reasons(user):
        untouched = job.run_id is not None and (
            ledger.get_run(store, job.run_id).state in UNDECRYPTED
        )
        error = FAILED_BEFORE_DECRYPTION if untouched else FAILED_AFTER_DECRYPTION
    return {
        "id": job.id,
        "kind": job.kind,
        "dataset_id": job.dataset_id,
        "submitter": job.submitter,
        "state": job.state,
        "params": job.params,
        "epsilon": job.epsilon,
        "progress": round(job.progress, 4),
        "error": error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def from_row(row: Row[Any]) -> Job:
    return Job(**{**row._asdict(), "params": json.loads(row.params)})


def result_dir(settings: ServiceSettings, job_id: str) -> Path:
    return settings.results / job_id


def train_config(
    settings: ServiceSettings, ds: Dataset, job_id: str, req: JobRequest
) -> TrainConfig:
    """The job's training settings: the dataset in the data directory, the bundle in the
    job's result directory, and only the dataset owner's signature accepted."""
    from securetrain.train import TrainConfig

    return TrainConfig(
        data=str(resolve_data_path(settings, ds.path)),
        out=result_dir(settings, job_id) / "bundle",
        epsilon=req.epsilon,
        model=req.model,
        epochs=req.epochs,
        classes=req.classes,
        store=settings.store,
        key_dir=settings.key_dir,
        public_key=owner_key_path(settings, ds.owner),
        passphrase_env=settings.passphrase_env,
    )


def get(store: Store, user: User, job_id: str) -> Job:
    """A job the user may see: an analyst's own training jobs, any job on a dataset an owner
    owns; auditors see all."""
    with store.read() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise NotVisible(job_id)
    job = from_row(row)
    if sees_job(user, job.submitter, job.kind, lambda: _owns_dataset(store, user, job)):
        return job
    raise NotVisible(job_id)


def _owns_dataset(store: Store, user: User, job: Job) -> bool:
    return job.dataset_id in {d.id for d in visible(store, user)}


def listing(store: Store, user: User) -> list[Job]:
    query = select(jobs).order_by(jobs.c.created_at.desc()).limit(200)
    if user.role == Role.ANALYST:
        query = query.where(jobs.c.submitter == user.name, jobs.c.kind == "train")
    elif user.role == Role.OWNER:
        owned = [d.id for d in visible(store, user)]
        query = query.where(jobs.c.dataset_id.in_(owned))
    elif user.role != Role.AUDITOR:
        return []
    with store.read() as conn:
        return [from_row(r) for r in conn.execute(query).all()]


def submit(store: Store, settings: ServiceSettings, user: User, req: JobRequest) -> Job:
    """Check access, reserve the ε (training) and queue the job, or hold it for approval.
    Analysts submit training jobs; owners (on their datasets) and auditors submit audits, which
    are queued at once."""
    from securetrain.train import parse_sealed, reserve_sealed, resolve_keys

    if req.kind == "train" and user.role != Role.ANALYST:
        raise Forbidden("training jobs (analysts submit them)")
    if req.kind == "audit" and user.role not in AUDITORS:
        raise Forbidden("audit jobs (a dataset's owner or an auditor submits them)")
    ds = get_visible(store, user, req.dataset_id)
    job_id = uuid.uuid4().hex
    run_id, epsilon, parent = None, 0.0, None
    if req.kind == "train":
        if req.epsilon is None:
            raise ConfigError("A training job needs epsilon (its privacy budget ε).")
        if ds.min_epsilon is not None and req.epsilon < ds.min_epsilon:
            raise ConfigError(
                f"Dataset {ds.id} takes training jobs of ε >= {ds.min_epsilon:g} (its owner's "
                f"minimum). Found ε = {req.epsilon:g}."
            )
        with store.read() as conn:
            _check_daily_limit(conn, ds, user)
        config = train_config(settings, ds, job_id, req)
        with acting_as(user.name):
            source = parse_sealed(config.data)
            run_id = reserve_sealed(config, resolve_keys(config), source, store=store)
        epsilon = req.epsilon
    else:
        if req.train_job is None:
            raise ConfigError("An audit job needs train_job (a finished training job's id).")
        train = get(store, user, req.train_job)
        if train.kind != "train" or train.state != "succeeded" or train.dataset_id != ds.id:
            raise ConfigError(
                f"Job {req.train_job} is not a succeeded training job on dataset {ds.id}."
            )
        parent = train.id
    state = "awaiting_approval" if ds.require_approval and req.kind == "train" else "queued"
    stamp = now()
    row = {
        "id": job_id,
        "kind": req.kind,
        "dataset_id": ds.id,
        "submitter": user.name,
        "state": state,
        "params": req.model_dump_json(),
        "epsilon": epsilon,
        "run_id": run_id,
        "parent": parent,
        "progress": 0.0,
        "log": "",
        "error": None,
        "created_at": stamp,
        "updated_at": stamp,
    }
    try:
        _insert(store, ds, user, row)
    except LimitReached:
        if run_id is not None:
            with acting_as(user.name):
                ledger.transition(store, run_id, "released", details={"job": job_id})
        raise
    return get(store, user, job_id)


def _check_daily_limit(conn: Connection, ds: Dataset, user: User) -> None:
    if ds.max_jobs_per_day is None or user.role != Role.ANALYST:
        return
    since = (datetime.now(UTC) - JOB_DAY).isoformat(timespec="microseconds")
    count = conn.execute(
        select(func.count())
        .select_from(jobs)
        .where(
            jobs.c.dataset_id == ds.id,
            jobs.c.submitter == user.name,
            jobs.c.kind == "train",
            jobs.c.created_at >= since,
        )
    ).scalar_one()
    if count >= ds.max_jobs_per_day:
        raise LimitReached(
            f"Dataset {ds.id} allows {ds.max_jobs_per_day} training job(s) per analyst in 24 "
            f"hours; you have submitted {count}."
        )


def _insert(store: Store, ds: Dataset, user: User, row: dict) -> None:
    """Insert the job, counting the analyst's jobs of the day again under the dataset's lock,
    so that concurrent submissions cannot pass the limit together."""
    with store.transaction() as conn:
        conn.execute(
            select(service_datasets.c.id).where(service_datasets.c.id == ds.id).with_for_update()
        )
        _check_daily_limit(conn, ds, user)
        conn.execute(insert(jobs).values(**row))
        details = {k: row[k] for k in ("dataset_id", "kind", "epsilon", "state")}
        append(store, conn, "job.submitted", row["id"], details, actor=user.name)


def _set_state(store: Store, job: Job, state: str, actor: str, expect: tuple[str, ...]) -> bool:
    with store.transaction() as conn:
        done = conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id, jobs.c.state.in_(expect))
            .values(state=state, updated_at=now())
        )
        if done.rowcount:
            append(store, conn, f"job.{state}", job.id, {"from": list(expect)}, actor=actor)
    return bool(done.rowcount)


def release_reservation(store: Store, job: Job, actor: str) -> None:
    """Release the job's ε reservation (a job that never decrypted anything)."""
    if job.run_id is not None:
        with acting_as(actor):
            ledger.transition(store, job.run_id, "released", details={"job": job.id})


def decide(store: Store, user: User, job_id: str, approve: bool) -> Job:
    """The dataset's owner approves or rejects a job awaiting approval."""
    job = get(store, user, job_id)
    if not may_decide(user, lambda: _owns_dataset(store, user, job)):
        raise Forbidden(job_id)
    state = "queued" if approve else "rejected"
    if not _set_state(store, job, state, user.name, ("awaiting_approval",)):
        raise ConfigError(f"Job {job_id} is {job.state}, not awaiting approval.")
    if not approve:
        release_reservation(store, job, user.name)
    return get(store, user, job_id)


def cancel(store: Store, user: User, job_id: str) -> Job:
    """Its submitter or the dataset's owner cancels a job. Before it runs, its reservation is
    released; a running job stops at its next step, and what it spent stays spent."""
    job = get(store, user, job_id)
    if not may_cancel(user, job.submitter):
        raise Forbidden(job_id)
    if _set_state(store, job, "cancelled", user.name, OPEN):
        release_reservation(store, job, user.name)
    elif not _set_state(store, job, "cancelling", user.name, ("running",)):
        raise ConfigError(f"Job {job_id} is {job.state}; it can no longer be cancelled.")
    return get(store, user, job_id)
