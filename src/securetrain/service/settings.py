"""Where the service keeps things, and the key set it holds (through a KeyProvider)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from securetrain.crypto.keys import KeySetPaths
from securetrain.crypto.providers import passphrase_from_env
from securetrain.errors import ConfigError
from securetrain.store.auditkey import AuditKey
from securetrain.store.engine import Store, securetrain_home

MAX_BODY = 1 << 20  # bytes: every request body is JSON, and a small one


class ServiceSettings(BaseModel):
    """``data_dir``: the only directory sealed datasets are registered from. ``key_dir``: the
    service's key set; it decrypts sealed data in the worker and signs every bundle, and no
    response ever carries it. ``results_dir``: bundles and audits of finished jobs.
    ``max_body``: the largest request body accepted, in bytes (HTTP 413 above it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    store: str | None = None
    data_dir: Path
    key_dir: Path
    passphrase_env: str | None = None
    results_dir: Path | None = None
    max_body: int = Field(default=MAX_BODY, ge=1024)

    @property
    def results(self) -> Path:
        path = self.results_dir or securetrain_home() / "service-results"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def open_store(self) -> Store:
        """The service's store, its audit log signed with the service's key set."""
        key = AuditKey(self.key_dir, passphrase_from_env(self.passphrase_env))
        return Store(self.store, audit_key=key)

    def check(self) -> None:
        if not self.data_dir.is_dir():
            raise ConfigError(f"Data directory not found: {str(self.data_dir)!r}.")
        if not self.key_dir.is_dir():
            raise ConfigError(f"Key directory not found: {str(self.key_dir)!r}.")
        if not KeySetPaths(self.key_dir).signing_key.is_file():
            raise ConfigError(
                f"{str(self.key_dir)!r} has no signing key; create it with `securetrain keys new`."
            )
