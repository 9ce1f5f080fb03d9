"""The HTTP API and the dashboard. Every route names the roles it admits; no response carries a
key or a row of data. Requests that touch a dataset, a job, a key or a user are written to the
audit log with the authenticated user as actor."""

import base64
import hashlib
import io
import json
import re
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from importlib.resources import files
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from securetrain.attacks.report import STYLE as REPORT_STYLE
from securetrain.bundle import read_card, verify_bundle
from securetrain.crypto.keys import KeySetPaths
from securetrain.errors import BudgetExceeded, SecureTrainError, SecurityError
from securetrain.service import auth, jobs, registry
from securetrain.service.auth import AuthError, Throttled, User
from securetrain.service.guards import BodyLimit, RefusalCounter, SecurityHeaders
from securetrain.service.redact import redact, redact_doc
from securetrain.service.settings import ServiceSettings
from securetrain.store.audit import acting_as, entries, record, verify_log

HEX32 = r"^[0-9a-f]{32}$"
AUDITED = re.compile(r"/api/v1/(datasets|jobs|users|tokens)(/|$)")
REPORT_STYLE_DIGEST = base64.b64encode(hashlib.sha256(REPORT_STYLE.encode()).digest()).decode()
REPORT_STYLE_HASH = f"'sha256-{REPORT_STYLE_DIGEST}'"
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' "
    f"{REPORT_STYLE_HASH}; img-src 'self' data:; frame-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)
REPORT_CSP = f"default-src 'none'; style-src {REPORT_STYLE_HASH}; img-src data:"
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
DatasetId = Annotated[str, Path(pattern=HEX32, description="A dataset id (32 hex digits).")]
JobId = Annotated[str, Path(pattern=HEX32, description="A job id (32 hex digits).")]
UserName = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_.-]{1,63}$")]
ALL = ("owner", "analyst", "auditor", "admin")


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{1,63}$")
    role: str = Field(pattern=r"^(owner|analyst|auditor|admin)$")
    password: str = Field(min_length=12, max_length=1024)


class OwnerKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(min_length=1, max_length=4096)  # the owner's signing.pub.pem


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(default="api", max_length=200)


class Policy(BaseModel):
    """The owner's rules for a dataset's training jobs; None: no limit."""

    model_config = ConfigDict(extra="forbid")
    require_approval: bool = True
    min_epsilon: float | None = Field(default=None, gt=0, le=100)
    max_jobs_per_day: int | None = Field(default=None, ge=1, le=10000)

    def limits(self) -> registry.Limits:
        return registry.Limits(self.require_approval, self.min_epsilon, self.max_jobs_per_day)


class NewDataset(Policy):
    path: str = Field(min_length=1, max_length=1024)
    name: str | None = Field(default=None, max_length=200)


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epsilon: float = Field(gt=0, le=1000)
    delta: float = Field(default=1e-5, gt=0, lt=1)


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    analyst: str = Field(pattern=r"^[a-z][a-z0-9_.-]{1,63}$")


def create_app(settings: ServiceSettings) -> FastAPI:
    settings.check()
    store = settings.open_store()
    public_key = KeySetPaths(settings.key_dir).public_key
    refusals = RefusalCounter(store)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(refusals.flush)  # the last window's refusals

    app = FastAPI(
        title="securetrain",
        version=version("securetrain"),
        description="Secure model training for a team: sealed datasets, privacy budgets, "
        "DP-SGD jobs, audits.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI loads its script from a CDN; the spec is enough
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.refusals = refusals
    bearer = HTTPBearer(auto_error=False)

    def current_user(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> User:
        if creds is None:
            raise HTTPException(401, "Log in first.", headers={"WWW-Authenticate": "Bearer"})
        try:
            user = auth.authenticate(store, creds.credentials)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        request.state.actor = user.name
        return user

    @app.middleware("http")
    async def audit_requests(request: Request, call_next):  # type: ignore[no-untyped-def]
        """Every request on a dataset, job, user or token, allowed or refused, with its actor;
        those refused for want of valid credentials are counted per address instead."""
        response = await call_next(request)
        actor = getattr(request.state, "actor", "anonymous")
        if AUDITED.match(request.url.path) and (actor, response.status_code) == ("anonymous", 401):
            await run_in_threadpool(refusals.count, _address(request), "unauthenticated")
        elif AUDITED.match(request.url.path):
            await run_in_threadpool(
                record,
                store,
                "http.request",
                request.url.path[:300],
                {"method": request.method, "status": response.status_code},
                actor=actor,
            )
        else:
            await run_in_threadpool(refusals.tick)
        return response

    app.add_middleware(BodyLimit, limit=settings.max_body)
    app.add_middleware(SecurityHeaders)

    def role(*allowed: str) -> Callable[..., User]:
        def check(user: Annotated[User, Depends(current_user)]) -> User:
            if user.role not in allowed:
                raise HTTPException(
                    403, f"This needs the role {' or '.join(allowed)}; you are {user.role}."
                )
            return user

        return check

    Any_ = Annotated[User, Depends(role(*ALL))]
    LogReader = Annotated[User, Depends(role("admin", "auditor"))]
    AdminOnly = Annotated[User, Depends(role("admin"))]
    Owner = Annotated[User, Depends(role("owner"))]
    Reader = Annotated[User, Depends(role("owner", "analyst", "auditor"))]
    Worker = Annotated[User, Depends(role("owner", "analyst"))]
    AuditReader = Annotated[User, Depends(role(*jobs.AUDITORS))]

    @app.exception_handler(SecureTrainError)
    def _errors(_request: Request, exc: SecureTrainError) -> JSONResponse:
        detail = redact(str(exc), settings)
        if isinstance(exc, Throttled):
            return JSONResponse(
                {"detail": detail},
                status_code=429,
                headers={"Retry-After": str(int(exc.retry_after) + 1)},
            )
        if isinstance(exc, AuthError):
            return JSONResponse({"detail": detail}, status_code=401)
        if isinstance(exc, BudgetExceeded):
            return JSONResponse({"detail": detail}, status_code=409)
        if isinstance(exc, jobs.LimitReached):
            return JSONResponse({"detail": detail}, status_code=429)
        if isinstance(exc, SecurityError):
            return JSONResponse({"detail": f"Verification failed: {detail}"}, status_code=422)
        return JSONResponse({"detail": detail}, status_code=400)

    @app.exception_handler(registry.NotVisible)
    def _not_found(_request: Request, exc: registry.NotVisible) -> JSONResponse:
        return JSONResponse({"detail": f"Not found: {exc}"}, status_code=404)

    @app.exception_handler(registry.Forbidden)
    def _forbidden(_request: Request, exc: registry.Forbidden) -> JSONResponse:
        return JSONResponse({"detail": f"Not allowed on {exc}."}, status_code=403)

    def _dataset(ds: registry.Dataset, user: User) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": ds.id,
            "name": ds.name,
            "owner": ds.owner,
            "require_approval": ds.require_approval,
            "min_epsilon": ds.min_epsilon,
            "max_jobs_per_day": ds.max_jobs_per_day,
            "budget": registry.budget(store, ds),
        }
        if user.role in ("owner", "auditor"):
            doc["path"] = ds.path
            doc["analysts"] = registry.analysts_of(store, ds.id)
        return doc

    # --- health and accounts ---------------------------------------------------------------

    @app.get("/api/v1/health", tags=["service"])
    def health() -> dict[str, str]:
        return {"status": "ok", "version": version("securetrain")}

    @app.post("/api/v1/auth/login", tags=["auth"])
    def login(body: LoginRequest, request: Request) -> dict[str, str]:
        address = _address(request)
        try:
            token, expires = auth.login(store, body.name, body.password, address)
        except Throttled:
            refusals.count(address, "login_throttled", body.name)
            raise
        except AuthError:
            refusals.count(address, "login_failed", body.name)
            raise
        return {"token": token, "expires_at": expires, "token_type": "bearer"}

    @app.post("/api/v1/auth/logout", tags=["auth"])
    def logout(user: Any_) -> dict[str, str]:
        assert user.credential_id is not None
        auth.revoke(store, user, user.credential_id)
        return {"status": "logged out"}

    @app.get("/api/v1/me", tags=["auth"])
    def me(user: Any_) -> dict[str, str]:
        return {"name": user.name, "role": user.role}

    @app.get("/api/v1/tokens", tags=["auth"])
    def tokens(user: Any_) -> list[dict]:
        return auth.list_tokens(store, user)

    @app.post("/api/v1/tokens", tags=["auth"], status_code=201)
    def new_token(body: NewToken, user: Any_) -> dict[str, str]:
        token, token_id = auth.create_api_token(store, user, body.label)
        return {"id": token_id, "token": token, "note": "shown once; store it safely"}

    @app.delete("/api/v1/tokens/{token_id}", tags=["auth"])
    def revoke_token(token_id: JobId, user: Any_) -> dict[str, str]:
        try:
            auth.revoke(store, user, token_id)
        except LookupError:
            raise registry.NotVisible(token_id) from None
        return {"status": "revoked"}

    @app.get("/api/v1/users", tags=["users"])
    def users(_user: AdminOnly) -> list[dict]:
        return auth.list_users(store)

    @app.post("/api/v1/users", tags=["users"], status_code=201)
    def add_user(body: NewUser, user: AdminOnly) -> dict[str, str]:
        with acting_as(user.name):
            added = auth.add_user(store, body.name, body.role, body.password)
        return {"name": added.name, "role": added.role}

    @app.delete("/api/v1/users/{name}", tags=["users"])
    def disable_user(name: UserName, user: AdminOnly) -> dict[str, str]:
        if name == user.name:
            raise HTTPException(400, "An admin cannot disable their own account.")
        try:
            with acting_as(user.name):
                auth.disable_user(store, name)
        except LookupError:
            raise registry.NotVisible(name) from None
        return {"status": "disabled"}

    @app.put("/api/v1/users/{name}/signing-key", tags=["users"], status_code=201)
    def bind_owner_key(name: UserName, body: OwnerKey, user: AdminOnly) -> dict[str, str]:
        fp = registry.bind_owner_key(
            store, settings, name, body.public_key.encode(), actor=user.name
        )
        return {"owner": name, "fingerprint": fp}

    # --- datasets ------------------------------------------------------------------------

    @app.get("/api/v1/datasets", tags=["datasets"])
    def datasets(user: Reader) -> list[dict]:
        return [_dataset(ds, user) for ds in registry.visible(store, user)]

    @app.post("/api/v1/datasets", tags=["datasets"], status_code=201)
    def register(body: NewDataset, user: Owner) -> dict:
        with acting_as(user.name):
            ds = registry.register(store, settings, user, body.path, body.name, body.limits())
        return _dataset(ds, user)

    @app.get("/api/v1/datasets/{dataset_id}", tags=["datasets"])
    def dataset(dataset_id: DatasetId, user: Reader) -> dict:
        ds = registry.get_visible(store, user, dataset_id)
        record(store, "dataset.viewed", ds.id, {}, actor=user.name)
        return _dataset(ds, user)

    @app.put("/api/v1/datasets/{dataset_id}/budget", tags=["datasets"])
    def set_budget(dataset_id: DatasetId, body: Budget, user: Owner) -> dict:
        with acting_as(user.name):
            registry.set_budget(store, settings, user, dataset_id, body.epsilon, body.delta)
        return _dataset(registry.get_owned(store, user, dataset_id), user)

    @app.put("/api/v1/datasets/{dataset_id}/policy", tags=["datasets"])
    def set_policy(dataset_id: DatasetId, body: Policy, user: Owner) -> dict:
        registry.set_policy(store, user, dataset_id, body.limits())
        return _dataset(registry.get_owned(store, user, dataset_id), user)

    @app.post("/api/v1/datasets/{dataset_id}/grants", tags=["datasets"], status_code=201)
    def grant(dataset_id: DatasetId, body: Grant, user: Owner) -> dict:
        registry.grant(store, user, dataset_id, body.analyst)
        return _dataset(registry.get_owned(store, user, dataset_id), user)

    @app.delete("/api/v1/datasets/{dataset_id}/grants/{analyst}", tags=["datasets"])
    def revoke_grant(dataset_id: DatasetId, analyst: UserName, user: Owner) -> dict:
        registry.revoke_grant(store, user, dataset_id, analyst)
        return _dataset(registry.get_owned(store, user, dataset_id), user)

    # --- jobs ----------------------------------------------------------------------------

    @app.get("/api/v1/jobs", tags=["jobs"])
    def job_list(user: Reader) -> list[dict]:
        return [jobs.view(store, user, j) for j in jobs.listing(store, user)]

    @app.post("/api/v1/jobs", tags=["jobs"], status_code=201)
    def submit(body: jobs.JobRequest, user: Reader) -> dict:
        return jobs.view(store, user, jobs.submit(store, settings, user, body))

    @app.get("/api/v1/jobs/{job_id}", tags=["jobs"])
    def job(job_id: JobId, user: Reader) -> dict:
        return jobs.view(store, user, jobs.get(store, user, job_id))

    @app.get("/api/v1/jobs/{job_id}/log", tags=["jobs"])
    def job_log(job_id: JobId, user: Reader) -> dict[str, str]:
        return {"log": redact(jobs.get(store, user, job_id).log, settings)}

    @app.post("/api/v1/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel(job_id: JobId, user: Reader) -> dict:
        return jobs.view(store, user, jobs.cancel(store, user, job_id))

    @app.post("/api/v1/jobs/{job_id}/approve", tags=["jobs"])
    def approve(job_id: JobId, user: Owner) -> dict:
        return jobs.view(store, user, jobs.decide(store, user, job_id, approve=True))

    @app.post("/api/v1/jobs/{job_id}/reject", tags=["jobs"])
    def reject(job_id: JobId, user: Owner) -> dict:
        return jobs.view(store, user, jobs.decide(store, user, job_id, approve=False))

    def _finished(job_id: str, user: User, kind: str) -> jobs.Job:
        job = jobs.get(store, user, job_id)
        if job.kind != kind or job.state != "succeeded":
            raise HTTPException(
                409, f"Job {job_id} is a {job.state} {job.kind} job; no {kind} result."
            )
        return job

    @app.get("/api/v1/jobs/{job_id}/card", tags=["results"])
    def card(job_id: JobId, user: Reader) -> dict:
        job = _finished(job_id, user, "train")
        card = read_card(jobs.result_dir(settings, job.id) / "bundle")
        return redact_doc(card.model_dump(mode="json", by_alias=True), settings)

    @app.get("/api/v1/jobs/{job_id}/verify", tags=["results"])
    def verify(job_id: JobId, user: Reader) -> dict:
        job = _finished(job_id, user, "train")
        verified = verify_bundle(jobs.result_dir(settings, job.id) / "bundle", public_key)
        record(store, "bundle.verified", job.id, {}, actor=user.name)
        return {"verified": True, "epsilon": verified.privacy.epsilon, "signing": verified.signing}

    @app.get(
        "/api/v1/jobs/{job_id}/bundle",
        tags=["results"],
        response_class=Response,
        responses={200: {"content": {"application/zip": {}}}},
    )
    def bundle(job_id: JobId, user: Worker) -> Response:
        job = _finished(job_id, user, "train")
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

    @app.get("/api/v1/jobs/{job_id}/audit", tags=["results"])
    def audit_result(job_id: JobId, user: AuditReader) -> dict:
        job = _finished(job_id, user, "audit")
        audit = json.loads((jobs.result_dir(settings, job.id) / "audit" / "audit.json").read_text())
        return redact_doc(audit, settings)

    @app.get("/api/v1/jobs/{job_id}/report", tags=["results"], response_class=HTMLResponse)
    def audit_report(job_id: JobId, user: AuditReader) -> HTMLResponse:
        job = _finished(job_id, user, "audit")
        html = (jobs.result_dir(settings, job.id) / "audit" / "audit.html").read_text()
        return HTMLResponse(redact(html, settings), headers={"Content-Security-Policy": REPORT_CSP})

    # --- the audit log -------------------------------------------------------------------

    @app.get("/api/v1/audit-log", tags=["audit log"])
    def audit_log(user: LogReader) -> list[dict]:
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

    def _address(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    @app.get("/api/v1/audit-log/verify", tags=["audit log"])
    def audit_log_verify(user: LogReader) -> dict:
        try:
            count = verify_log(store)
        except SecurityError as exc:
            return {"verified": False, "problem": str(exc)}
        return {"verified": True, "entries": count}

    # --- the dashboard -------------------------------------------------------------------

    package = files("securetrain.service")
    page = package.joinpath("dashboard.html").read_text(encoding="utf-8")
    assets = {name: package.joinpath(name).read_bytes() for name in STATIC}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(
            page,
            headers={"Content-Security-Policy": DASHBOARD_CSP, "X-Frame-Options": "SAMEORIGIN"},
        )

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, "Not found.")
        return Response(
            assets[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"}
        )

    return app
