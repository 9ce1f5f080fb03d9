"""Opening the store: SQLite under SECURETRAIN_HOME by default, PostgreSQL for teams.

Every write happens in a transaction that serialises writers: ``BEGIN IMMEDIATE`` on SQLite,
row and table locks on PostgreSQL. That, not a Python lock, is what keeps concurrent processes
from overspending a budget or forking the audit log.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from securetrain.errors import ConfigError
from securetrain.store.auditkey import AuditKey, AuditSigner, load_signer

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


def sqlite_directory(url: str) -> Path | None:
    """The directory of a SQLite database file (None for other databases and in-memory ones)."""
    database = make_url(url).database if url.startswith("sqlite") else None
    return Path(database).resolve().parent if database and database != ":memory:" else None


def store_name(url: str) -> str:
    """A store's URL without its password (SQLite: the absolute path)."""
    db_dir = sqlite_directory(url)
    if db_dir is not None:
        return f"sqlite:///{db_dir / Path(str(make_url(url).database)).name}"
    return make_url(url).render_as_string(hide_password=True)


@functools.cache
def _migrations() -> tuple[str, str]:
    """The migration scripts' directory and the revision they lead to."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    location = str(Path(__file__).parent / "migrations")
    cfg = Config()
    cfg.set_main_option("script_location", location)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return location, head


def _sqlite_serialising(engine: Engine) -> None:
    """Let SQLAlchemy, not the driver, begin transactions, and make each one take the write
    lock up front (the documented pysqlite recipe)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.info.get(READ_ONLY) else "BEGIN IMMEDIATE")


class Store:
    """A migrated database plus the locking rules for writers, and the audit key that signs
    its audit log: ``audit_key``, else the one the environment names
    (:meth:`AuditKey.from_environment`). Close it (or use it as a context manager) to dispose
    of its connections and drop its signing key."""

    def __init__(self, url: str | None = None, *, audit_key: AuditKey | None = None) -> None:
        self.url = store_url(url)
        self.name = store_name(self.url)
        self._audit_key = audit_key
        self._signer: AuditSigner | None = None
        self._signer_lock = threading.Lock()
        self._closed = False
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
            if self._revision() != _migrations()[1]:
                self._migrate()
        except OperationalError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise ConfigError(
                f"Cannot open store {redact_url(self.url)!r}: {redact_url(first)}"
            ) from None

    def _revision(self) -> str | None:
        """The schema's migration revision (None for an empty database)."""
        from alembic.migration import MigrationContext

        with self.read() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def _migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", _migrations()[0])
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(7411)"))  # one migrator at a time
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @property
    def audit_key(self) -> AuditKey:
        return self._audit_key or AuditKey.from_environment()

    def audit_signer(self) -> AuditSigner:
        """The audit key's signing key, loaded once for this store (again if the key changed)."""
        key = self.audit_key
        with self._signer_lock:
            if self._signer is None or self._signer.key != key:
                self._signer = load_signer(key, sqlite_directory(self.url))
            return self._signer

    def _open(self) -> None:
        if self._closed:
            raise ConfigError(f"The store {self.name!r} is closed.")

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction. The work given to :meth:`before_commit` runs in it, last; what
        that work returns runs once the transaction has committed."""
        self._open()
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
        self._open()
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
        """Dispose of the engine's connections and drop the audit signing key; the store
        refuses further use."""
        self._closed = True
        with self._signer_lock:
            self._signer = None
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
