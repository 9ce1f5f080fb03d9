"""Opening the store: SQLite under SECURETRAIN_HOME by default, PostgreSQL for teams.

Every write happens in a transaction that serialises writers: ``BEGIN IMMEDIATE`` on SQLite,
row and table locks on PostgreSQL. That, not a Python lock, is what keeps concurrent processes
from overspending a budget or forking the audit log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, OperationalError

from securetrain.errors import ConfigError

HOME_ENV = "SECURETRAIN_HOME"
STORE_ENV = "SECURETRAIN_STORE"
READ_ONLY = "securetrain_read_only"
COMMIT_HOOKS = "securetrain_commit_hooks"
_PASSWORD = re.compile(r"(\w[\w+.-]*://[^/:@\s]*:)[^@/\s]*@")


def securetrain_home() -> Path:
    home = Path(os.environ.get(HOME_ENV) or Path.home() / ".securetrain")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home


def store_url(url: str | None = None) -> str:
    return url or os.environ.get(STORE_ENV) or f"sqlite:///{securetrain_home() / 'store.db'}"


def redact_url(text: str) -> str:
    """``text`` with the password of every database URL in it replaced by ``***``."""
    return _PASSWORD.sub(r"\1***@", text)


def _sqlite_serialising(engine: Engine) -> None:
    """Let SQLAlchemy, not the driver, begin transactions, and make each one take the write
    lock up front (the documented pysqlite recipe)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.info.get(READ_ONLY) else "BEGIN IMMEDIATE")


class Store:
    """A migrated database plus the locking rules for writers."""

    def __init__(self, url: str | None = None) -> None:
        self.url = store_url(url)
        try:
            kwargs = {"connect_args": {"timeout": 60}} if self.url.startswith("sqlite") else {}
            self.engine = create_engine(self.url, **kwargs)
        except (ArgumentError, ImportError, ValueError) as exc:
            raise ConfigError(
                f"Cannot open store {redact_url(self.url)!r}: {redact_url(str(exc))}"
            ) from None
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            _sqlite_serialising(self.engine)
        try:
            self._migrate()
        except OperationalError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise ConfigError(
                f"Cannot open store {redact_url(self.url)!r}: {redact_url(first)}"
            ) from None

    def _migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(7411)"))  # one migrator at a time
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction. The work given to :meth:`before_commit` runs in it, last; what
        that work returns runs once the transaction has committed."""
        after: list[Callable[[], None]] = []
        with self.engine.begin() as conn:
            hooks: dict[str, Callable[[Connection], Callable[[], None]]] = {}
            conn.info[COMMIT_HOOKS] = hooks
            try:
                yield conn
                after.extend(hook(conn) for hook in hooks.values())
            finally:
                conn.info.pop(COMMIT_HOOKS, None)
        for done in after:
            done()

    def before_commit(
        self, conn: Connection, name: str, hook: Callable[[Connection], Callable[[], None]]
    ) -> None:
        """Run ``hook`` once (per ``name``) at the end of the transaction ``conn`` belongs to."""
        hooks = conn.info.get(COMMIT_HOOKS)
        if hooks is None:
            raise ConfigError(f"{name} needs a write transaction from Store.transaction().")
        hooks.setdefault(name, hook)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: a consistent snapshot that does not take SQLite's write
        lock, so reads (the service's polling) do not queue behind writers."""
        with self.engine.connect() as conn:
            conn.info[READ_ONLY] = True
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info.pop(READ_ONLY, None)

    def lock_audit(self, conn: Connection) -> None:
        """Serialise appends to the audit log (SQLite: already, by BEGIN IMMEDIATE)."""
        if not self.is_sqlite:
            conn.execute(text("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE"))

    def lock_dataset(self, conn: Connection, dataset_id: str) -> None:
        """Serialise reservations against one dataset's budget."""
        if not self.is_sqlite:
            conn.execute(
                text("SELECT id FROM datasets WHERE id = :id FOR UPDATE"), {"id": dataset_id}
            )

    def close(self) -> None:
        self.engine.dispose()
