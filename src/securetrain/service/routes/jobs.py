"""Jobs: submit, list, follow, cancel; owners approve or reject their datasets' jobs."""

from fastapi import APIRouter

from securetrain.service import jobs
from securetrain.service.redact import redact
from securetrain.service.routes.deps import (
    JobId,
    Owner,
    OwnerAnalystOrAuditor,
    ServiceStore,
    Settings,
)

router = APIRouter()


@router.get("/api/v1/jobs", tags=["jobs"])
def job_list(user: OwnerAnalystOrAuditor, store: ServiceStore) -> list[dict]:
    return [jobs.view(store, user, j) for j in jobs.listing(store, user)]


@router.post("/api/v1/jobs", tags=["jobs"], status_code=201)
def submit(
    body: jobs.JobRequest, user: OwnerAnalystOrAuditor, store: ServiceStore, settings: Settings
) -> dict:
    return jobs.view(store, user, jobs.submit(store, settings, user, body))


@router.get("/api/v1/jobs/{job_id}", tags=["jobs"])
def job(job_id: JobId, user: OwnerAnalystOrAuditor, store: ServiceStore) -> dict:
    return jobs.view(store, user, jobs.get(store, user, job_id))


@router.get("/api/v1/jobs/{job_id}/log", tags=["jobs"])
def job_log(
    job_id: JobId, user: OwnerAnalystOrAuditor, store: ServiceStore, settings: Settings
) -> dict[str, str]:
    return {"log": redact(jobs.get(store, user, job_id).log, settings)}


@router.post("/api/v1/jobs/{job_id}/cancel", tags=["jobs"])
def cancel(job_id: JobId, user: OwnerAnalystOrAuditor, store: ServiceStore) -> dict:
    return jobs.view(store, user, jobs.cancel(store, user, job_id))


@router.post("/api/v1/jobs/{job_id}/approve", tags=["jobs"])
def approve(job_id: JobId, user: Owner, store: ServiceStore) -> dict:
    return jobs.view(store, user, jobs.decide(store, user, job_id, approve=True))


@router.post("/api/v1/jobs/{job_id}/reject", tags=["jobs"])
def reject(job_id: JobId, user: Owner, store: ServiceStore) -> dict:
    return jobs.view(store, user, jobs.decide(store, user, job_id, approve=False))
