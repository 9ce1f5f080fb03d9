"""The service's one list of roles: each route dependency admits exactly the roles its name
says, every place that takes a role name accepts exactly the four, the ownership rules give
known answers, and the app and its routers stay readable (400 lines a module, 80 a function)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest
from fastapi import HTTPException
from pydantic import ValidationError

from securetrain.errors import ConfigError
from securetrain.service.roles import (
    Role,
    User,
    may_cancel,
    may_decide,
    may_run,
    parse_role,
    sees_job,
)
from securetrain.service.routes import deps
from securetrain.service.routes.users import NewUser

SERVICE = Path(__file__).parents[2] / "src" / "securetrain" / "service"
ALIASES = (
    "AnyRole",
    "Admin",
    "Owner",
    "OwnerOrAnalyst",
    "OwnerOrAuditor",
    "AdminOrAuditor",
    "OwnerAnalystOrAuditor",
)


def _admitted(alias: str) -> set[str]:
    check = get_args(getattr(deps, alias))[1].dependency
    admitted = set()
    for role in Role:
        try:
            check(User("someone", role.value))
        except HTTPException as exc:
            assert exc.status_code == 403 and f"you are {role.value}" in exc.detail
        else:
            admitted.add(role.value)
    return admitted


@pytest.mark.parametrize("alias", ALIASES)
def test_each_alias_admits_the_roles_it_names(alias: str) -> None:
    named = (
        set(Role)
        if alias == "AnyRole"
        else {w.lower() for w in re.findall(r"[A-Z][a-z]+", alias) if w != "Or"}
    )
    assert _admitted(alias) == named


def test_one_list_of_roles() -> None:
    assert [r.value for r in Role] == ["owner", "analyst", "auditor", "admin"]
    for candidate in [*Role, "Owner", "owners", "root", "", "admin ", "analyst|admin"]:
        body = {"name": "newcomer", "role": candidate, "password": "x" * 12}
        if candidate in {r.value for r in Role}:
            assert parse_role(candidate) == candidate
            assert NewUser.model_validate(body).role == candidate
            continue
        with pytest.raises(
            ConfigError, match=rf"owner, analyst, auditor, admin\. Found {candidate!r}"
        ):
            parse_role(candidate)
        with pytest.raises(ValidationError):
            NewUser.model_validate(body)


def test_ownership_rules_known_answers() -> None:
    ana, alice, audrey, adam = (
        User(n, r)
        for n, r in (
            ("ana", "analyst"),
            ("alice", "owner"),
            ("audrey", "auditor"),
            ("adam", "admin"),
        )
    )
    asked: list[str] = []

    def owns() -> bool:
        asked.append("owns")
        return True

    assert sees_job(ana, "ana", "train", owns) and not sees_job(ana, "ana", "audit", owns)
    assert not sees_job(ana, "bob", "train", owns) and sees_job(audrey, "ana", "audit", owns)
    assert not asked  # ownership is looked up for owners only
    assert sees_job(alice, "ana", "train", owns) and asked == ["owns"]
    assert not sees_job(alice, "ana", "train", lambda: False)
    assert not sees_job(adam, "adam", "train", owns)
    assert may_decide(alice, owns) and not may_decide(audrey, owns) and not may_decide(ana, owns)
    assert may_cancel(alice, "ana") and may_cancel(ana, "ana") and may_cancel(audrey, "audrey")
    assert not may_cancel(audrey, "alice")
    assert may_run("analyst", "train", granted=True, owns=False)
    assert not may_run("analyst", "train", granted=False, owns=True)
    assert not may_run("analyst", "audit", granted=True, owns=True)
    assert may_run("owner", "audit", granted=False, owns=True)
    assert not may_run("owner", "audit", granted=True, owns=False)
    assert may_run("auditor", "audit", granted=False, owns=False)
    assert not may_run("auditor", "train", granted=True, owns=True)
    assert not may_run("admin", "audit", granted=True, owns=True)


def test_app_and_routers_stay_short() -> None:
    paths = [SERVICE / "app.py", SERVICE / "roles.py", *sorted((SERVICE / "routes").glob("*.py"))]
    for path in paths:
        text = path.read_text()
        assert text.count("\n") <= 400, f"{path.name} has {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body[-1].end_lineno - node.body[0].lineno + 1
                assert body <= 80, f"{path.name}: {node.name} has a {body}-line body"
