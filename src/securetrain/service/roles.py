"""The service's four roles, the user a request acts as, and the rules that say what each role may
see and do. Routes admit roles through the dependencies in ``service.routes.deps``; the rules
below are the checks that also depend on the object (who owns the dataset, who submitted the
job)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from securetrain.errors import ConfigError


class Role(StrEnum):
    """Owners register datasets, set their budgets and grant analysts; analysts train on the
    datasets granted to them; auditors read everything and run privacy audits; admins manage
    accounts and read the audit log."""

    OWNER = "owner"
    ANALYST = "analyst"
    AUDITOR = "auditor"
    ADMIN = "admin"


ROLE_PATTERN = f"^({'|'.join(Role)})$"
AUDITORS = (Role.OWNER, Role.AUDITOR)  # who may start privacy audits and read their results


@dataclass(frozen=True)
class User:
    name: str
    role: str
    credential_id: str | None = None


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ConfigError(f"Role must be one of {', '.join(Role)}. Found {value!r}.") from None


def sees_dataset_details(user: User) -> bool:
    """Owners (of the datasets they see) and auditors see a dataset's path and its analysts."""
    return user.role in (Role.OWNER, Role.AUDITOR)


def sees_failure_reasons(user: User) -> bool:
    """A failed job's reason may describe the decrypted data: analysts get a generic message."""
    return user.role != Role.ANALYST


def sees_job(user: User, submitter: str, kind: str, owns_dataset: Callable[[], bool]) -> bool:
    """Auditors see every job, analysts their own training jobs, owners the jobs on their
    datasets (``owns_dataset`` is asked only for owners)."""
    if user.role == Role.AUDITOR:
        return True
    if user.role == Role.ANALYST:
        return submitter == user.name and kind == "train"
    return user.role == Role.OWNER and owns_dataset()


def may_decide(user: User, owns_dataset: Callable[[], bool]) -> bool:
    """Only the dataset's owner approves or rejects its jobs."""
    return user.role == Role.OWNER and owns_dataset()


def may_cancel(user: User, submitter: str) -> bool:
    """A job's submitter or the dataset's owner cancels it; an auditor only their own audits."""
    return user.role != Role.AUDITOR or submitter == user.name


def may_run(role: str, kind: str, *, granted: bool, owns: bool) -> bool:
    """Whether a job's submitter, now of ``role``, may still have it run: an analyst a training
    job on a dataset still granted to them, the dataset's owner or an auditor an audit."""
    if role == Role.ANALYST:
        return kind == "train" and granted
    if role == Role.OWNER:
        return kind == "audit" and owns
    return role == Role.AUDITOR and kind == "audit"
