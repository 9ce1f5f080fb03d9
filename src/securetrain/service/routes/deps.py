"""What a route depends on: the service's store and settings (kept on the app's state), the
authenticated user, and the roles a route admits, each alias named after the roles it admits."""

from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from securetrain.service import auth
from securetrain.service.auth import AuthError, User
from securetrain.service.roles import AUDITORS, Role
from securetrain.service.settings import ServiceSettings
from securetrain.store import Store

HEX32 = r"^[0-9a-f]{32}$"
DatasetId = Annotated[str, Path(pattern=HEX32, description="A dataset id (32 hex digits).")]
JobId = Annotated[str, Path(pattern=HEX32, description="A job id (32 hex digits).")]
UserName = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_.-]{1,63}$")]
bearer = HTTPBearer(auto_error=False)


def _store(request: Request) -> Store:
    return request.app.state.store


def _settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def _public_key(request: Request) -> FilePath:
    return request.app.state.public_key


ServiceStore = Annotated[Store, Depends(_store)]
Settings = Annotated[ServiceSettings, Depends(_settings)]
PublicKey = Annotated[FilePath, Depends(_public_key)]


def address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def current_user(
    request: Request,
    store: ServiceStore,
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


def require(*allowed: Role) -> Callable[..., User]:
    """A dependency that admits the authenticated user if their role is one of ``allowed``."""

    def check(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role not in allowed:
            raise HTTPException(
                403, f"This needs the role {' or '.join(allowed)}; you are {user.role}."
            )
        return user

    return check


AnyRole = Annotated[User, Depends(require(*Role))]
Admin = Annotated[User, Depends(require(Role.ADMIN))]
Owner = Annotated[User, Depends(require(Role.OWNER))]
OwnerOrAnalyst = Annotated[User, Depends(require(Role.OWNER, Role.ANALYST))]
OwnerOrAuditor = Annotated[User, Depends(require(*AUDITORS))]
AdminOrAuditor = Annotated[User, Depends(require(Role.ADMIN, Role.AUDITOR))]
OwnerAnalystOrAuditor = Annotated[User, Depends(require(Role.OWNER, Role.ANALYST, Role.AUDITOR))]
