"""The FastAPI app: the routers (``service.routes``), the error mapping, the audit of requests,
the guards and the dashboard. Requests that touch a dataset, a job, a key or a user are written
to the audit log with the authenticated user as actor."""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from importlib.resources import files

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.middleware.base import RequestResponseEndpoint

from securetrain.crypto.keys import KeySetPaths
from securetrain.errors import BudgetExceeded, SecureTrainError, SecurityError
from securetrain.service import jobs, registry
from securetrain.service.auth import AuthError, Throttled
from securetrain.service.guards import BodyLimit, RefusalCounter, SecurityHeaders
from securetrain.service.redact import redact
from securetrain.service.routes import ROUTERS
from securetrain.service.routes.deps import address
from securetrain.service.routes.results import REPORT_STYLE_HASH
from securetrain.service.settings import ServiceSettings
from securetrain.store.auditlog import record

AUDITED = re.compile(r"/api/v1/(datasets|jobs|users|tokens)(/|$)")
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' "
    f"{REPORT_STYLE_HASH}; img-src 'self' data:; frame-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service's app. Its store (``app.state.store``) outlives each start and stop of the
    app; whoever serves it closes the store once the server has stopped."""
    settings.check()
    store = settings.open_store()
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
    app.state.settings = settings
    app.state.store = store
    app.state.public_key = KeySetPaths(settings.key_dir).public_key
    app.state.refusals = refusals
    app.middleware("http")(audit_requests)
    app.add_middleware(BodyLimit, limit=settings.max_body)
    app.add_middleware(SecurityHeaders)
    app.exception_handler(SecureTrainError)(_errors)
    app.exception_handler(registry.NotVisible)(_not_found)
    app.exception_handler(registry.Forbidden)(_forbidden)
    for router in ROUTERS:
        app.include_router(router)
    _dashboard(app)
    return app


async def audit_requests(request: Request, call_next: RequestResponseEndpoint) -> Response:
    """Every request on a dataset, job, user or token, allowed or refused, with its actor;
    those refused for want of valid credentials are counted per address instead."""
    response = await call_next(request)
    refusals = request.app.state.refusals
    actor = getattr(request.state, "actor", "anonymous")
    if AUDITED.match(request.url.path) and (actor, response.status_code) == ("anonymous", 401):
        await run_in_threadpool(refusals.count, address(request), "unauthenticated")
    elif AUDITED.match(request.url.path):
        await run_in_threadpool(
            record,
            request.app.state.store,
            "http.request",
            request.url.path[:300],
            {"method": request.method, "status": response.status_code},
            actor=actor,
        )
    else:
        await run_in_threadpool(refusals.tick)
    return response


def _errors(request: Request, exc: SecureTrainError) -> JSONResponse:
    detail = redact(str(exc), request.app.state.settings)
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


def _not_found(_request: Request, exc: registry.NotVisible) -> JSONResponse:
    return JSONResponse({"detail": f"Not found: {exc}"}, status_code=404)


def _forbidden(_request: Request, exc: registry.Forbidden) -> JSONResponse:
    return JSONResponse({"detail": f"Not allowed on {exc}."}, status_code=403)


def _dashboard(app: FastAPI) -> None:
    """The dashboard page and its script and style sheet, outside the API's spec."""
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
