"""Health, log-in and log-out, the caller's own account and API tokens."""

from importlib.metadata import version

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from securetrain.service import auth, registry
from securetrain.service.auth import AuthError, Throttled
from securetrain.service.routes.deps import AnyRole, JobId, ServiceStore, address

router = APIRouter()


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(default="api", max_length=200)


@router.get("/api/v1/health", tags=["service"])
def health() -> dict[str, str]:
    return {"status": "ok", "version": version("securetrain")}


@router.post("/api/v1/auth/login", tags=["auth"])
def login(body: LoginRequest, request: Request, store: ServiceStore) -> dict[str, str]:
    refusals = request.app.state.refusals
    client = address(request)
    try:
        token, expires = auth.login(store, body.name, body.password, client)
    except Throttled:
        refusals.count(client, "login_throttled", body.name)
        raise
    except AuthError:
        refusals.count(client, "login_failed", body.name)
        raise
    return {"token": token, "expires_at": expires, "token_type": "bearer"}


@router.post("/api/v1/auth/logout", tags=["auth"])
def logout(user: AnyRole, store: ServiceStore) -> dict[str, str]:
    assert user.credential_id is not None
    auth.revoke(store, user, user.credential_id)
    return {"status": "logged out"}


@router.get("/api/v1/me", tags=["auth"])
def me(user: AnyRole) -> dict[str, str]:
    return {"name": user.name, "role": user.role}


@router.get("/api/v1/tokens", tags=["auth"])
def tokens(user: AnyRole, store: ServiceStore) -> list[dict]:
    return auth.list_tokens(store, user)


@router.post("/api/v1/tokens", tags=["auth"], status_code=201)
def new_token(body: NewToken, user: AnyRole, store: ServiceStore) -> dict[str, str]:
    token, token_id = auth.create_api_token(store, user, body.label)
    return {"id": token_id, "token": token, "note": "shown once; store it safely"}


@router.delete("/api/v1/tokens/{token_id}", tags=["auth"])
def revoke_token(token_id: JobId, user: AnyRole, store: ServiceStore) -> dict[str, str]:
    try:
        auth.revoke(store, user, token_id)
    except LookupError:
        raise registry.NotVisible(token_id) from None
    return {"status": "revoked"}
