"""``securetrain serve`` (the team service and its job worker) and ``securetrain users``."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from securetrain.cli.common import PassphraseOption, StoreOption, console
from securetrain.errors import ConfigError
from securetrain.service.lifecycle import SHUTDOWN_TIMEOUT
from securetrain.service.roles import Role
from securetrain.service.settings import MAX_BODY

if TYPE_CHECKING:
    import uvicorn

    from securetrain.service.lifecycle import Shutdown, Workers
    from securetrain.service.settings import ServiceSettings

users_app = typer.Typer(help="Accounts of the team service.", no_args_is_help=True)


def _settings(
    data_dir: Path,
    key: Path,
    passphrase_env: str | None,
    store: str | None,
    results: Path | None,
    max_body: int,
) -> ServiceSettings:
    from securetrain.service.settings import ServiceSettings

    if max_body < 1024:
        raise ConfigError(f"--max-body must be at least 1024 bytes. Found {max_body}.")
    settings = ServiceSettings(
        store=store,
        data_dir=data_dir,
        key_dir=key,
        passphrase_env=passphrase_env,
        results_dir=results,
        max_body=max_body,
    )
    settings.check()
    return settings


def _run_until_stopped(
    server: uvicorn.Server, workers: Workers, shutdown: Shutdown, timeout: float
) -> bool:
    """Serve HTTP in a thread until a signal (or the HTTP server's own end), then stop accepting
    and stop the workers within ``timeout`` seconds of the first signal. False: the HTTP server
    ended by itself (it could not listen, say)."""
    http = threading.Thread(target=server.run, name="securetrain-http")
    http.start()
    while not shutdown.requested.wait(0.2) and http.is_alive():
        pass
    signalled = shutdown.requested.is_set()
    deadline = (shutdown.started or time.monotonic()) + timeout
    server.should_exit = True
    stopper = threading.Thread(target=workers.stop, args=(deadline, shutdown.forced))
    stopper.start()
    while http.is_alive() and time.monotonic() < deadline and not shutdown.forced.is_set():
        http.join(0.2)
    server.force_exit = True
    http.join()
    while stopper.is_alive():
        stopper.join(0.2)
    return signalled


def serve_command(
    data_dir: Annotated[
        Path, typer.Option(help="The only directory sealed datasets are registered from.")
    ],
    key: Annotated[
        Path, typer.Option(help="The service's key set: decrypts sealed data, signs bundles.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    results: Annotated[
        Path | None, typer.Option(help="Where finished jobs' bundles and audits are kept.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Job worker processes.")] = 1,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain) to serve HTTPS with.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    max_body: Annotated[
        int, typer.Option(help="Largest request body accepted, in bytes (HTTP 413 above).")
    ] = MAX_BODY,
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds from SIGTERM/SIGINT to exit: running jobs stop, workers are killed "
            "after it."
        ),
    ] = SHUTDOWN_TIMEOUT,
    passphrase_env: PassphraseOption = None,
    store: StoreOption = None,
) -> None:
    """Run the team service: the HTTP API and dashboard, and job workers in their own
    processes. SIGTERM or SIGINT stops it within --shutdown-timeout; a second signal forces it
    (exit status 1)."""
    import uvicorn

    from securetrain.service.app import create_app
    from securetrain.service.lifecycle import Shutdown, Workers

    settings = _settings(data_dir, key, passphrase_env, store, results, max_body)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1. Found {workers}.")
    if not shutdown_timeout > 0:
        raise ConfigError(f"--shutdown-timeout must be positive. Found {shutdown_timeout}.")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError(
            "--tls-cert and --tls-key go together. Found only "
            f"{'--tls-cert' if tls_key is None else '--tls-key'}."
        )
    for option, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{option} file not found: {str(path)!r}.")
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
        )
    )
    shutdown = Shutdown()
    try:
        pool = Workers(settings, workers)
        pool.start()
        scheme = "https" if tls_cert is not None else "http"
        console.print(f"securetrain service on {scheme}://{host}:{port}/ (API: /api/openapi.json)")
        signalled = _run_until_stopped(server, pool, shutdown, shutdown_timeout)
    finally:
        shutdown.restore()
        app.state.store.close()  # its engine, and the audit key it signs with
    if not signalled:
        raise ConfigError(f"The HTTP server on {host}:{port} stopped without a signal (see above).")
    if shutdown.forced.is_set():
        raise typer.Exit(1)
    console.print("securetrain service stopped")


@users_app.command("add")
def add_user_command(
    name: Annotated[str, typer.Argument(help="The user name (lower case).")],
    role: Annotated[str, typer.Option(help=f"One of {', '.join(Role)}.")],
    password_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the password (else it is asked for)."),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            help="The service's key set, which signs its audit log (default: SECURETRAIN_AUDIT_KEY)."
        ),
    ] = None,
    passphrase_env: PassphraseOption = None,
    store: StoreOption = None,
) -> None:
    """Create an account (the first admin is created this way)."""
    from securetrain.crypto.providers import passphrase_from_env
    from securetrain.service.auth import add_user
    from securetrain.store import AuditKey, Store

    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise ConfigError(f"Environment variable {password_env} is not set.")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    audit_key = None if key is None else AuditKey(key, passphrase_from_env(passphrase_env))
    with Store(store, audit_key=audit_key) as s:
        user = add_user(s, name, role, password)
    console.print(f"added {user.name} ({user.role})")


@users_app.command("list")
def list_users_command(store: StoreOption = None) -> None:
    """The accounts, their roles and whether they are disabled."""
    from securetrain.service.auth import list_users
    from securetrain.store import Store

    with Store(store) as s:
        found = list_users(s)
    for u in found:
        console.print(f"{u['name']:<24} {u['role']:<8} {'disabled' if u['disabled'] else 'active'}")
