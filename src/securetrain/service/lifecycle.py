"""The service's processes: job workers that stop with their server, a shutdown bounded in
time, and jobs whose worker died.

Each worker holds the read end of a pipe whose only write end its server holds. The server
sends "stop" on it at shutdown; if the server dies instead (even by SIGKILL), the pipe closes,
and the worker stops as well. A worker tells its server, over a second pipe, the id of each job
it claims (before the claim commits), so that when a worker dies the server knows its job and
marks it failed. Jobs left running by a server that died are marked failed when ``serve``
starts again. Either way the job's ledger run is failed, never released: its charge stays.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from types import FrameType

from sqlalchemy import select, update

from securetrain.service.settings import ServiceSettings
from securetrain.store import Store, ledger
from securetrain.store.auditlog import acting_as, append, now
from securetrain.store.schema import jobs

SHUTDOWN_TIMEOUT = 30.0  # seconds from the first signal to exit, by default
ORPHAN_GRACE = 5.0  # seconds a worker whose server died gives its job to stop, then it exits
RESPAWN_AFTER = 5.0  # a worker that died sooner than this after it started is replaced this late
WORKER_STOPPED = "WorkerStopped"  # the error kind recorded for a job whose worker died
_LOG = logging.getLogger(__name__)


def abandon(store: Store, job_ids: Iterable[str] | None, reason: str) -> list[str]:
    """End the jobs left running by a worker that died: ``failed`` with ``reason`` (or
    ``cancelled``, if they were being cancelled). ``job_ids=None``: every such job, for when no
    worker runs on the store (``serve`` starting). Their ledger runs become failed whatever
    they had reached, so their charge stays. Returns the ids of the jobs ended."""
    query = select(jobs).where(jobs.c.state.in_(("running", "cancelling")))
    if job_ids is not None:
        query = query.where(jobs.c.id.in_(list(job_ids)))
    with store.read() as conn:
        rows = conn.execute(query).all()
    ended = []
    for row in rows:
        state = "cancelled" if row.state == "cancelling" else "failed"
        with store.transaction() as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == row.id, jobs.c.state == row.state)
                .values(state=state, error=reason if state == "failed" else None, updated_at=now())
            )
            if done.rowcount:
                details = {"error": WORKER_STOPPED}
                append(store, conn, f"job.{state}", row.id, details, actor=row.submitter)
        if not done.rowcount:
            continue
        ended.append(row.id)
        if row.run_id is not None and ledger.get_run(store, row.run_id).state in (
            "reserved",
            "running",
        ):
            with acting_as(row.submitter):
                ledger.transition(
                    store, row.run_id, "failed", details={"job": row.id, "error": WORKER_STOPPED}
                )
    return ended


def worker_main(settings_json: str, server: Connection, reports: Connection) -> None:
    """A job worker process: runs queued jobs until its server says stop or goes away."""
    from securetrain.service.worker import work

    settings = ServiceSettings.model_validate_json(settings_json)
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which decides
    signal.signal(signal.SIGTERM, lambda _sig, _frame: stop.set())
    threading.Thread(target=_watch_server, args=(server, stop), daemon=True).start()
    with settings.open_store() as store:
        try:
            work(store, settings, stop=stop, on_claim=reports.send)
        except BrokenPipeError:  # the server went away as a job was claimed: it stays queued
            pass


def _watch_server(server: Connection, stop: threading.Event) -> None:
    """Stop the worker when its server says so or dies; exit outright after the grace."""
    try:
        grace = float(server.recv())
    except (EOFError, OSError):
        grace = ORPHAN_GRACE
    stop.set()
    time.sleep(grace)
    os._exit(1)


@dataclass
class _Worker:
    proc: multiprocessing.process.BaseProcess
    control: Connection  # the server's end of the pipe the worker watches
    reports: Connection | None  # job ids the worker claims; None once closed
    started: float
    job: str | None = None


class Workers:
    """The job worker processes of one server: started, replaced when one dies (its job ended
    as failed), stopped with the server."""

    def __init__(self, settings: ServiceSettings, count: int) -> None:
        self._settings, self._count = settings, count
        self._store = settings.open_store()
        self._context = multiprocessing.get_context("spawn")
        self._procs: list[_Worker] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="securetrain-workers")

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._procs if w.proc.pid is not None]

    def start(self) -> None:
        """End the jobs a previous server left running, then start the workers."""
        for job_id in abandon(
            self._store, None, "The service stopped while the job ran; its charge stays."
        ):
            _LOG.warning("job %s was left running by a stopped service; marked failed", job_id)
        with self._lock:
            self._procs = [self._spawn() for _ in range(self._count)]
        self._thread.start()

    def _spawn(self) -> _Worker:
        watch, control = self._context.Pipe(duplex=False)
        reports, report = self._context.Pipe(duplex=False)
        proc = self._context.Process(
            target=worker_main,
            args=(self._settings.model_dump_json(), watch, report),
            name="securetrain-worker",
        )
        proc.start()
        watch.close()
        report.close()
        return _Worker(proc, control, reports, time.monotonic())

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self._poll(0.5)

    def _poll(self, timeout: float) -> None:
        """Read the workers' claims; reap the dead ones, end their jobs, replace them unless
        stopping."""
        with self._lock:
            live = list(self._procs)
        waitables = [w.proc.sentinel for w in live] + [w.reports for w in live if w.reports]
        wait(waitables, timeout)
        for w in live:
            self._read(w)
            if w.proc.is_alive():
                continue
            w.proc.join()
            self._read(w)
            w.control.close()
            if w.job is not None:
                reason = (
                    f"The job's worker stopped (exit code {w.proc.exitcode}); its charge stays."
                )
                for job_id in abandon(self._store, [w.job], reason):
                    _LOG.warning("worker %s died running job %s", w.proc.pid, job_id)
            with self._lock:
                self._procs.remove(w)
            if not self._stopping.is_set():
                self._stopping.wait(max(0.0, RESPAWN_AFTER - (time.monotonic() - w.started)))
            if not self._stopping.is_set():
                with self._lock:
                    self._procs.append(self._spawn())

    @staticmethod
    def _read(w: _Worker) -> None:
        while w.reports is not None and w.reports.poll():
            try:
                w.job = w.reports.recv()
            except (EOFError, OSError):
                w.reports.close()
                w.reports = None

    def stop(self, deadline: float, force: threading.Event) -> None:
        """Tell every worker to stop (a running job fails at its next step, charge kept); kill
        those still running at ``deadline`` or once ``force`` is set; end their jobs."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        for w in self._procs:
            try:
                w.control.send(max(0.0, deadline - time.monotonic()))
            except OSError:
                pass
        while self._procs and time.monotonic() < deadline and not force.is_set():
            self._poll(min(0.2, max(0.0, deadline - time.monotonic())))
        for w in self._procs:
            w.proc.kill()
        while self._procs:
            self._poll(1.0)
        self._store.close()


class Shutdown:
    """SIGTERM and SIGINT handlers: the first signal asks for a shutdown, the second forces it."""

    def __init__(self) -> None:
        self.requested, self.forced = threading.Event(), threading.Event()
        self.started: float | None = None
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)
        }

    def _handle(self, _sig: int, _frame: FrameType | None) -> None:
        if self.requested.is_set():
            self.forced.set()
        else:
            self.started = time.monotonic()
        self.requested.set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
