"""The worker half of jobs: claim the oldest queued job and run it to its end state, in a worker
process, never in a request handler.

A training job runs ``train_reserved`` on the ε its submission reserved; an audit job runs a
privacy audit of a finished training job's bundle. Progress and log lines go to the job's row
at most once a second; a job cancelled while it runs stops at its next step
(:class:`Cancelled`), and one whose service stops fails at its next step (:class:`Interrupted`),
its charge kept either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from securetrain.errors import SecureTrainError
from securetrain.service.jobs import (
    Job,
    JobRequest,
    from_row,
    release_reservation,
    result_dir,
    train_config,
)
from securetrain.service.redact import redact
from securetrain.service.registry import Dataset, dataset_by_id
from securetrain.service.roles import may_run
from securetrain.service.settings import ServiceSettings
from securetrain.store import Store
from securetrain.store.auditlog import acting_as, append, now
from securetrain.store.schema import grants, jobs, users

if TYPE_CHECKING:
    from securetrain.train import StepInfo

PROGRESS_EVERY = 1.0  # seconds between progress writes
_LOG = logging.getLogger(__name__)


class Cancelled(SecureTrainError):
    """The job was cancelled while it ran."""


class Interrupted(SecureTrainError):
    """The service stopped while the job ran: the job fails at its next step (charge kept)."""


class _Recorder:
    """Progress and log lines from the worker to the job's row, at most once a second."""

    def __init__(self, store: Store, job_id: str, stop: threading.Event | None = None) -> None:
        self.store, self.job_id, self.last = store, job_id, 0.0
        self.lines: list[str] = []
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
        values: dict[str, Any] = {"log": self.text, "updated_at": now()}
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
    return from_row(row)


def run(
    store: Store, settings: ServiceSettings, job: Job, stop: threading.Event | None = None
) -> None:
    """Run a claimed job to its end state; once ``stop`` is set, a running job fails at its
    next step (:class:`Interrupted`, its charge kept)."""
    from securetrain.attacks.privacy_audit import run_privacy_audit, write_attack_report
    from securetrain.train import (
        audited_bundle,
        load_data,
        parse_sealed,
        resolve_keys,
        train_reserved,
    )

    recorder = _Recorder(store, job.id, stop)
    req = JobRequest.model_validate(job.params)
    ds = dataset_by_id(store, job.dataset_id)
    withdrawn = _access_withdrawn(store, job, ds)
    if withdrawn is not None:
        _finish(store, job, {"state": "failed", "error": withdrawn}, "AccessWithdrawn")
        release_reservation(store, job, job.submitter)
        return
    result_dir(settings, job.id).mkdir(mode=0o700)
    config = train_config(settings, ds, job.id, req)
    keys = resolve_keys(config)
    state, error, failure = "succeeded", None, None

    def progress(info: StepInfo) -> None:
        recorder.flush(progress=info.step / max(1, info.steps))

    try:
        with acting_as(job.submitter):
            if job.kind == "train":
                assert job.run_id is not None
                recorder.log(f"training on {ds.name} at ε = {job.epsilon}")
                source = parse_sealed(config.data)
                result = train_reserved(config, keys, source, job.run_id, progress, store=store)
                audited_bundle(store, result)
                recorder.log(f"bundle written and signed; ε = {result.card.privacy.epsilon:.4f}")
            else:
                assert job.parent is not None
                recorder.log(f"privacy audit of the model of job {job.parent}")
                data = load_data(config)
                report = run_privacy_audit(
                    result_dir(settings, job.parent) / "bundle",
                    data,
                    canaries=req.canaries,
                    progress=progress,
                )
                write_attack_report(result_dir(settings, job.id) / "audit", report)
                recorder.log("attack report written")
    except Cancelled:
        state = "cancelled"
    except SecureTrainError as exc:
        state, error, failure = "failed", redact(str(exc), settings), type(exc).__name__
    except Exception as exc:  # a bug: keep the worker alive, record the job as failed
        failure = type(exc).__name__
        state, error = "failed", f"internal error: {failure}"
        _LOG.exception("job %s failed with an internal error", job.id)  # the server's log only
    values: dict[str, Any] = {"state": state, "error": error, "log": recorder.text}
    if state == "succeeded":
        values["progress"] = 1.0
    _finish(store, job, values, failure)


def _finish(store: Store, job: Job, values: dict[str, Any], failure: str | None) -> None:
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
