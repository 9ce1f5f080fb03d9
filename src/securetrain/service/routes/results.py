"""A finished job's results: the model card, its verification, the bundle, and a privacy audit's
results and report."""

import base64
import hashlib
import io
import json
import zipfile

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from securetrain.attacks.report import STYLE as REPORT_STYLE
from securetrain.bundle import read_card, verify_bundle
from securetrain.service import jobs
from securetrain.service.auth import User
from securetrain.service.redact import redact, redact_doc
from securetrain.service.routes.deps import (
    JobId,
    OwnerAnalystOrAuditor,
    OwnerOrAnalyst,
    OwnerOrAuditor,
    PublicKey,
    ServiceStore,
    Settings,
)
from securetrain.store import Store
from securetrain.store.auditlog import record

REPORT_STYLE_DIGEST = base64.b64encode(hashlib.sha256(REPORT_STYLE.encode()).digest()).decode()
REPORT_STYLE_HASH = f"'sha256-{REPORT_STYLE_DIGEST}'"
REPORT_CSP = f"default-src 'none'; style-src {REPORT_STYLE_HASH}; img-src data:"

router = APIRouter()


def _finished(store: Store, job_id: str, user: User, kind: str) -> jobs.Job:
    job = jobs.get(store, user, job_id)
    if job.kind != kind or job.state != "succeeded":
        raise HTTPException(409, f"Job {job_id} is a {job.state} {job.kind} job; no {kind} result.")
    return job


@router.get("/api/v1/jobs/{job_id}/card", tags=["results"])
def card(
    job_id: JobId, user: OwnerAnalystOrAuditor, store: ServiceStore, settings: Settings
) -> dict:
    job = _finished(store, job_id, user, "train")
    card = read_card(jobs.result_dir(settings, job.id) / "bundle")
    return redact_doc(card.model_dump(mode="json", by_alias=True), settings)


@router.get("/api/v1/jobs/{job_id}/verify", tags=["results"])
def verify(
    job_id: JobId,
    user: OwnerAnalystOrAuditor,
    store: ServiceStore,
    settings: Settings,
    public_key: PublicKey,
) -> dict:
    job = _finished(store, job_id, user, "train")
    verified = verify_bundle(jobs.result_dir(settings, job.id) / "bundle", public_key)
    record(store, "bundle.verified", job.id, {}, actor=user.name)
    return {"verified": True, "epsilon": verified.privacy.epsilon, "signing": verified.signing}


@router.get(
    "/api/v1/jobs/{job_id}/bundle",
    tags=["results"],
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}},
)
def bundle(
    job_id: JobId, user: OwnerOrAnalyst, store: ServiceStore, settings: Settings
) -> Response:
    job = _finished(store, job_id, user, "train")
    root = jobs.result_dir(settings, job.id) / "bundle"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            zf.write(path, f"bundle/{path.relative_to(root)}")
    record(store, "bundle.downloaded", job.id, {}, actor=user.name)
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="securetrain-{job.id}.zip"'},
    )


@router.get("/api/v1/jobs/{job_id}/audit", tags=["results"])
def audit_result(
    job_id: JobId, user: OwnerOrAuditor, store: ServiceStore, settings: Settings
) -> dict:
    job = _finished(store, job_id, user, "audit")
    audit = json.loads((jobs.result_dir(settings, job.id) / "audit" / "audit.json").read_text())
    return redact_doc(audit, settings)


@router.get("/api/v1/jobs/{job_id}/report", tags=["results"], response_class=HTMLResponse)
def audit_report(
    job_id: JobId, user: OwnerOrAuditor, store: ServiceStore, settings: Settings
) -> HTMLResponse:
    job = _finished(store, job_id, user, "audit")
    html = (jobs.result_dir(settings, job.id) / "audit" / "audit.html").read_text()
    return HTMLResponse(redact(html, settings), headers={"Content-Security-Policy": REPORT_CSP})
