"""Jobs: training jobs submitted by analysts, approved by owners (or automatically within
budget), run by a worker process, never in a request handler.

A training job's ε is reserved in the ledger when it is submitted (from the sealed header
alone, nothing decrypted). Rejecting or cancelling it before it runs releases the reservation;
once the worker has decrypted the data, the charge stays, whatever happens next.

An audit job audits the bundle of a finished training job on the same dataset. Its results are
exact statistics over the training rows (membership counts, ROC curves, retrained models), not
DP releases: only the dataset's owner and auditors start audits and read them. For the same
reason an analyst sees a failed job's reason only as a generic message; the error's text, which
may describe the data, goes to the owner and auditors.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, insert, select, update

from securetrain.errors import ConfigError, SecureTrainError
from securetrain.service.redact import redact
from securetrain.service.registry import (
    Dataset,
    Forbidden,
    NotVisible,
    dataset_by_id,
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
    may_run,
    sees_failure_reasons,
    sees_job,
)
from securetrain.service.settings import ServiceSettings
from securetrain.store import Store, ledger
from securetrain.store.audit import acting_as, append, now
from securetrain.store.schema import grants, jobs, service_datasets, users

OPEN = ("awaiting_approval", "queued")
UNDECRYPTED = ("reserved", "released")  # ledger states of a run that decrypted nothing
FAILED_AFTER_DECRYPTION = (
    "The job failed after the data was decrypted, and its charge stays; the dataset's owner "
    "can see the reason."
)
FAILED_BEFORE_DECRYPTION = (
    "The job failed before any data was decrypted; the dataset's owner can see the reason."
)
PROGRESS_EVERY = 1.0  # seconds between progress writes
JOB_DAY = timedelta(hours=24)  # the window of a dataset's jobs-per-analyst limit
_LOG = logging.getLogger(__name__)


class LimitReached(SecureTrainError):
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


def _job(row) -> Job:  # type: ignore[no-untyped-def]
    return Job(**{**row._asdict(), "params": json.loads(row.params)})


def result_dir(settings: ServiceSettings, job_id: str) -> Path:
    return settings.results / job_id


def _train_config(settings: ServiceSettings, ds: Dataset, job_id: str, req: JobRequest):  # type: ignore[no-untyped-def]
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
        public_key=owner_key_path(settings, ds.owner),  # only the owner's signature is accepted
        passphrase_env=settings.passphrase_env,
    )


def get(store: Store, user: User, job_id: str) -> Job:
    """A job the user may see: an analyst's own training jobs, any job on a dataset an owner
    owns; auditors see all."""
    with store.read() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise NotVisible(job_id)
    job = _job(row)
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
        return [_job(r) for r in conn.execute(query).all()]


def submit(store: Store, settings: ServiceSettings, user: User, req: JobRequest) -> Job:
    """Check access, reserve the ε (training) and queue the job, or hold it for approval.
    Analysts submit training jobs; owners (on their datasets) and auditors submit audits, which
    are queued at once."""
    from securetrain.train import reserve_sealed, resolve_keys

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
        config = _train_config(settings, ds, job_id, req)
        with acting_as(user.name):
            run_id = reserve_sealed(config, resolve_keys(config))
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


def _check_daily_limit(conn, ds: Dataset, user: User) -> None:  # type: ignore[no-untyped-def]
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


def _release(store: Store, job: Job, actor: str) -> None:
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
        _release(store, job, user.name)
    return get(store, user, job_id)


def cancel(store: Store, user: User, job_id: str) -> Job:
    """Its submitter or the dataset's owner cancels a job. Before it runs, its reservation is
    released; a running job stops at its next step, and what it spent stays spent."""
    job = get(store, user, job_id)
    if not may_cancel(user, job.submitter):
        raise Forbidden(job_id)
    if _set_state(store, job, "cancelled", user.name, OPEN):
        _release(store, job, user.name)
    elif not _set_state(store, job, "cancelling", user.name, ("running",)):
        raise ConfigError(f"Job {job_id} is {job.state}; it can no longer be cancelled.")
    return get(store, user, job_id)


class Cancelled(SecureTrainError):
    """The job was cancelled while it ran."""


class Interrupted(SecureTrainError):
    """The service stopped while the job ran: the job fails at its next step (charge kept)."""


class _Recorder:
    """Progress and log lines from the worker to the job's row, at most once a second."""

    def __init__(self, store: Store, job_id: str, stop: threading.Event | None = None) -> None:
        self.store, self.job_id, self.last, self.lines = store, job_id, 0.0, []
        self.stop = stop

    @property
    def text(self) -> str:
        return "\n".join(self.lines[-500:])

    def log(self, line: str) -> None:
        self.lines.append(f"{now()} {line}")
        self.flush(force=True)

    def flush(self, progress: float | None = None, force: bool = False) -> None:
        if progress is not None and self.stop is not None and self.stop.is_set():
            raise Interrupted(f"Job {self.job_id} was interrupted: the service stopped.")
        if not force and time.monotonic() - self.last < PROGRESS_EVERY:
            return
        self.last = time.monotonic()
        values: dict = {"log": self.text, "updated_at": now()}
        if progress is not None:
            values["progress"] = progress
        with self.store.transaction() as conn:
            conn.execute(update(jobs).where(jobs.c.id == self.job_id).values(**values))
            state = conn.execute(select(jobs.c.state).where(jobs.c.id == self.job_id)).scalar()
        if state == "cancelling":
            raise Cancelled(f"Job {self.job_id} was cancelled.")


def claim(store: Store, on_claim: Callable[[str], None] | None = None) -> Job | None:
    """Take the oldest queued job for this worker (an atomic state change). ``on_claim`` is
    told the job's id before the change commits, so that whoever watches the worker knows the
    job it runs if the worker dies."""
    with store.transaction() as conn:
        row = conn.execute(
            select(jobs).where(jobs.c.state == "queued").order_by(jobs.c.created_at).limit(1)
        ).first()
        if row is None:
            return None
        done = conn.execute(
            update(jobs)
            .where(jobs.c.id == row.id, jobs.c.state == "queued")
            .values(state="running", updated_at=now())
        )
        if not done.rowcount:
            return None
        if on_claim is not None:
            on_claim(row.id)
        append(store, conn, "job.running", row.id, {}, actor=row.submitter)
    return _job(row)


def run(
    store: Store, settings: ServiceSettings, job: Job, stop: threading.Event | None = None
) -> None:
    """Run a claimed job to its end state; once ``stop`` is set, a running job fails at its
    next step (:class:`Interrupted`, its charge kept)."""
    from securetrain.attacks.audit import run_audit, write_audit
    from securetrain.train import load_data, resolve_keys, train_reserved

    recorder = _Recorder(store, job.id, stop)
    req = JobRequest.model_validate(job.params)
    ds = dataset_by_id(store, job.dataset_id)
    withdrawn = _access_withdrawn(store, job, ds)
    if withdrawn is not None:
        _finish(store, job, {"state": "failed", "error": withdrawn}, "AccessWithdrawn")
        _release(store, job, job.submitter)
        return
    result_dir(settings, job.id).mkdir(mode=0o700)
    config = _train_config(settings, ds, job.id, req)
    keys = resolve_keys(config)
    state, error, failure = "succeeded", None, None

    def progress(info) -> None:  # type: ignore[no-untyped-def]
        recorder.flush(progress=info.step / max(1, info.steps))

    try:
        with acting_as(job.submitter):
            if job.kind == "train":
                assert job.run_id is not None
                recorder.log(f"training on {ds.name} at ε = {job.epsilon}")
                result = train_reserved(config, keys, job.run_id, progress)
                recorder.log(f"bundle written and signed; ε = {result.card.privacy.epsilon:.4f}")
            else:
                assert job.parent is not None
                recorder.log(f"auditing the model of job {job.parent}")
                data = load_data(config)
                audit = run_audit(
                    result_dir(settings, job.parent) / "bundle",
                    data,
                    canaries=req.canaries,
                    progress=progress,
                )
                write_audit(result_dir(settings, job.id) / "audit", audit)
                recorder.log("audit written")
    except Cancelled:
        state = "cancelled"
    except SecureTrainError as exc:
        state, error, failure = "failed", redact(str(exc), settings), type(exc).__name__
    except Exception as exc:  # a bug: keep the worker alive, record the job as failed
        failure = type(exc).__name__
        state, error = "failed", f"internal error: {failure}"
        _LOG.exception("job %s failed with an internal error", job.id)  # the server's log only
    values: dict = {"state": state, "error": error, "log": recorder.text}
    if state == "succeeded":
        values["progress"] = 1.0
    _finish(store, job, values, failure)


def _finish(store: Store, job: Job, values: dict, failure: str | None) -> None:
    state = values["state"]
    with store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(updated_at=now(), **values))
        append(store, conn, f"job.{state}", job.id, {"error": failure}, actor=job.submitter)


def _access_withdrawn(store: Store, job: Job, ds: Dataset) -> str | None:
    """Why the job's submitter may no longer run it (account disabled, grant revoked, dataset
    no longer theirs), checked again when the worker takes it; None if they still may."""
    with store.read() as conn:
        row = conn.execute(select(users).where(users.c.name == job.submitter)).first()
        granted = conn.execute(
            select(grants.c.analyst).where(
                grants.c.dataset_id == ds.id, grants.c.analyst == job.submitter
            )
        ).first()
    if row is None or row.disabled:
        return f"The account {job.submitter!r} was disabled before the job ran."
    if not may_run(row.role, job.kind, granted=granted is not None, owns=ds.owner == job.submitter):
        return f"{job.submitter!r} no longer has access to dataset {ds.id}; the job did not run."
    return None


def work(
    store: Store,
    settings: ServiceSettings,
    *,
    once: bool = False,
    idle: float = 1.0,
    stop: threading.Event | None = None,
    on_claim: Callable[[str], None] | None = None,
) -> int:
    """The worker loop: run queued jobs one at a time. ``once``: stop when none is queued;
    ``stop``: claim nothing more once it is set, and interrupt the running job at its next step.
    ``on_claim``: told each job's id as it is claimed."""
    stop = stop or threading.Event()
    done = 0
    while not stop.is_set():
        job = claim(store, on_claim)
        if job is None:
            if once:
                return done
            stop.wait(idle)
            continue
        run(store, settings, job, stop)
        done += 1
    return done
