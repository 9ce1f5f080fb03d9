"""The audit log: its last entries and its verification (auditors and admins)."""

from fastapi import APIRouter

from securetrain.errors import SecurityError
from securetrain.service.routes.deps import AdminOrAuditor, ServiceStore
from securetrain.store.auditlog import entries, verify_log

router = APIRouter()


@router.get("/api/v1/audit-log", tags=["audit log"])
def audit_log(user: AdminOrAuditor, store: ServiceStore) -> list[dict]:
    return [
        {
            "seq": e.seq,
            "timestamp": e.timestamp,
            "actor": e.actor,
            "action": e.action,
            "object": e.object,
            "details": e.details,
        }
        for e in entries(store)[-500:]
    ]


@router.get("/api/v1/audit-log/verify", tags=["audit log"])
def audit_log_verify(user: AdminOrAuditor, store: ServiceStore) -> dict:
    try:
        count = verify_log(store)
    except SecurityError as exc:
        return {"verified": False, "problem": str(exc)}
    return {"verified": True, "entries": count}
