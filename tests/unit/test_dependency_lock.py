"""The installed environment is the locked one: every distribution pinned with hashes, and the
security-relevant requirements bounded above so that a new major release is a reviewed change."""

import re
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SECURITY_RELEVANT = {
    "cryptography",
    "model-signing",
    "pyopenssl",
    "argon2-cffi",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "flwr",
    "pydantic",
    "safetensors",
    "dp-accounting",
}


def _lock(name: str) -> dict[str, tuple[str, list[str]]]:
    text = (ROOT / "requirements" / name).read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = re.fullmatch(
            r"([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)\s*", line
        )
        assert match, f"not a hash-pinned line: {line!r}"
        pins[canonicalize_name(match[1])] = (match[2], match[3].split())
    return pins


def test_every_locked_distribution_is_pinned_with_a_hash_and_installed_at_that_version() -> None:
    locked = {**_lock("runtime.lock"), **_lock("extras.lock"), **_lock("dev.lock")}
    assert "torch" not in locked  # pinned by exact version in the Makefile instead
    for name, (version, hashes) in locked.items():
        assert hashes
        assert metadata.version(name) == version, name


def _requirements(extra: str) -> list[Requirement]:
    """securetrain's requirements that ``extra`` ("" for the core) adds."""
    reqs = map(Requirement, metadata.requires("securetrain") or [])
    if not extra:
        return [r for r in reqs if r.marker is None]
    return [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": extra})]


def test_every_requirement_is_in_the_lock_of_its_layer() -> None:
    runtime = _lock("runtime.lock")
    extras = _lock("extras.lock")
    layers = [("", runtime), ("federated", extras), ("service", extras)]
    for extra, lock in layers:
        for req in _requirements(extra):
            name = canonicalize_name(req.name)
            if name == "torch":
                continue
            assert name in lock, (extra, name)
            assert req.specifier.contains(lock[name][0]), (name, lock[name][0])


def test_the_core_lock_holds_no_federated_or_service_distribution() -> None:
    runtime = _lock("runtime.lock")
    for name in ("flwr", "ray", "fastapi", "uvicorn", "psycopg", "argon2-cffi"):
        assert name not in runtime, name


def test_security_relevant_dependencies_have_upper_bounds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    declared = [*project["dependencies"], *optional["federated"], *optional["service"]]
    bounded = {
        canonicalize_name(r.name)
        for r in map(Requirement, declared)
        if any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)
    }
    assert SECURITY_RELEVANT <= bounded, SECURITY_RELEVANT - bounded
