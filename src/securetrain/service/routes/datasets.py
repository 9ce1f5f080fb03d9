"""Datasets: register from the data directory, view, set the budget and policy, grant analysts."""

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from securetrain.service import registry
from securetrain.service.auth import User
from securetrain.service.roles import sees_dataset_details
from securetrain.service.routes.deps import (
    DatasetId,
    Owner,
    OwnerAnalystOrAuditor,
    ServiceStore,
    Settings,
    UserName,
)
from securetrain.store import Store
from securetrain.store.auditlog import acting_as, record

router = APIRouter()


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


def dataset_doc(store: Store, ds: registry.Dataset, user: User) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": ds.id,
        "name": ds.name,
        "owner": ds.owner,
        "require_approval": ds.require_approval,
        "min_epsilon": ds.min_epsilon,
        "max_jobs_per_day": ds.max_jobs_per_day,
        "budget": registry.budget(store, ds),
    }
    if sees_dataset_details(user):
        doc["path"] = ds.path
        doc["analysts"] = registry.analysts_of(store, ds.id)
    return doc


@router.get("/api/v1/datasets", tags=["datasets"])
def datasets(user: OwnerAnalystOrAuditor, store: ServiceStore) -> list[dict]:
    return [dataset_doc(store, ds, user) for ds in registry.visible(store, user)]


@router.post("/api/v1/datasets", tags=["datasets"], status_code=201)
def register(body: NewDataset, user: Owner, store: ServiceStore, settings: Settings) -> dict:
    with acting_as(user.name):
        ds = registry.register(store, settings, user, body.path, body.name, body.limits())
    return dataset_doc(store, ds, user)


@router.get("/api/v1/datasets/{dataset_id}", tags=["datasets"])
def dataset(dataset_id: DatasetId, user: OwnerAnalystOrAuditor, store: ServiceStore) -> dict:
    ds = registry.get_visible(store, user, dataset_id)
    record(store, "dataset.viewed", ds.id, {}, actor=user.name)
    return dataset_doc(store, ds, user)


@router.put("/api/v1/datasets/{dataset_id}/budget", tags=["datasets"])
def set_budget(
    dataset_id: DatasetId, body: Budget, user: Owner, store: ServiceStore, settings: Settings
) -> dict:
    with acting_as(user.name):
        registry.set_budget(store, settings, user, dataset_id, body.epsilon, body.delta)
    return dataset_doc(store, registry.get_owned(store, user, dataset_id), user)


@router.put("/api/v1/datasets/{dataset_id}/policy", tags=["datasets"])
def set_policy(dataset_id: DatasetId, body: Policy, user: Owner, store: ServiceStore) -> dict:
    registry.set_policy(store, user, dataset_id, body.limits())
    return dataset_doc(store, registry.get_owned(store, user, dataset_id), user)


@router.post("/api/v1/datasets/{dataset_id}/grants", tags=["datasets"], status_code=201)
def grant(dataset_id: DatasetId, body: Grant, user: Owner, store: ServiceStore) -> dict:
    registry.grant(store, user, dataset_id, body.analyst)
    return dataset_doc(store, registry.get_owned(store, user, dataset_id), user)


@router.delete("/api/v1/datasets/{dataset_id}/grants/{analyst}", tags=["datasets"])
def revoke_grant(
    dataset_id: DatasetId, analyst: UserName, user: Owner, store: ServiceStore
) -> dict:
    registry.revoke_grant(store, user, dataset_id, analyst)
    return dataset_doc(store, registry.get_owned(store, user, dataset_id), user)
