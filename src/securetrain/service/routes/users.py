"""Accounts (admins only): list, add, disable, and bind an owner's signing key."""

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from securetrain.service import auth, registry
from securetrain.service.roles import ROLE_PATTERN
from securetrain.service.routes.deps import Admin, ServiceStore, Settings, UserName
from securetrain.store.auditlog import acting_as

router = APIRouter()


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{1,63}$")
    role: str = Field(pattern=ROLE_PATTERN)
    password: str = Field(min_length=12, max_length=1024)


class OwnerKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(min_length=1, max_length=4096)  # the owner's signing.pub.pem


@router.get("/api/v1/users", tags=["users"])
def users(_user: Admin, store: ServiceStore) -> list[dict]:
    return auth.list_users(store)


@router.post("/api/v1/users", tags=["users"], status_code=201)
def add_user(body: NewUser, user: Admin, store: ServiceStore) -> dict[str, str]:
    with acting_as(user.name):
        added = auth.add_user(store, body.name, body.role, body.password)
    return {"name": added.name, "role": added.role}


@router.delete("/api/v1/users/{name}", tags=["users"])
def disable_user(name: UserName, user: Admin, store: ServiceStore) -> dict[str, str]:
    if name == user.name:
        raise HTTPException(400, "An admin cannot disable their own account.")
    try:
        with acting_as(user.name):
            auth.disable_user(store, name)
    except LookupError:
        raise registry.NotVisible(name) from None
    return {"status": "disabled"}


@router.put("/api/v1/users/{name}/signing-key", tags=["users"], status_code=201)
def bind_owner_key(
    name: UserName, body: OwnerKey, user: Admin, store: ServiceStore, settings: Settings
) -> dict[str, str]:
    fp = registry.bind_owner_key(store, settings, name, body.public_key.encode(), actor=user.name)
    return {"owner": name, "fingerprint": fp}
