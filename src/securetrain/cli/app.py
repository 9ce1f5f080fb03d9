"""The ``securetrain`` command: one module per command, thin wrappers around the library."""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from securetrain.cli.audit import audit_command
from securetrain.cli.common import audit, err_console
from securetrain.cli.demo import demo_command
from securetrain.cli.federated import federated_app
from securetrain.cli.flags import with_flags
from securetrain.cli.keys import keys_app
from securetrain.cli.ledger import budget_app, log_app
from securetrain.cli.predict import predict_command
from securetrain.cli.screen import screen_command
from securetrain.cli.sealed import inspect_command, seal_command, unseal_command, verify_command
from securetrain.cli.serve import serve_command, users_app
from securetrain.cli.train import train_command
from securetrain.errors import BudgetExceeded, SecureTrainError, SecurityError

app = typer.Typer(
    name="securetrain",
    help="Secure model training: differential privacy with a computed guarantee.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(keys_app, name="keys")
app.add_typer(budget_app, name="budget")
app.add_typer(log_app, name="log")
app.add_typer(federated_app, name="federated")
app.add_typer(users_app, name="users")
app.command("seal")(seal_command)
app.command("inspect")(inspect_command)
app.command("verify")(verify_command)
app.command("unseal")(unseal_command)
app.command("train")(train_command)
app.command("predict")(predict_command)
app.command("screen")(screen_command)
app.command("audit")(audit_command)
app.command("demo")(demo_command)
app.command("serve")(serve_command)

EXIT_USER_ERROR = 2
EXIT_SECURITY_FAILURE = 3
EXIT_BUDGET_EXCEEDED = 4

# The optional extra that provides each third-party package the core library does not install.
EXTRA_OF = {
    "flwr": "federated",
    "ray": "federated",
    "fastapi": "service",
    "starlette": "service",
    "uvicorn": "service",
    "psycopg": "service",
    "argon2": "service",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one-line message for a command that needs an extra not installed, else None."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return (
        f"This command needs securetrain's [{extra}] extra; module {module!r} is not installed. "
        f"Install it with: pip install 'securetrain[{extra}]'"
    )


def _audit_failure(exc: SecurityError) -> None:
    """Record a failed security check; never let logging hide the failure itself."""
    try:
        audit("verification.failed", " ".join(sys.argv[1:3]), {"error": str(exc)})
    except SecureTrainError:
        pass


def _print_error(exc: Exception) -> None:
    err_console.print(
        f"[bold red]error:[/bold red] {escape(with_flags(str(exc)))}",
        highlight=False,
        soft_wrap=True,
    )


def main() -> None:
    """Entry point: errors become one line on stderr; exit 2 for bad input, 3 for a failed
    security check (wrong key, tampering, bad signature), 4 for an exceeded privacy budget."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # inherited by every process this one starts
    try:
        app(standalone_mode=False)
    except SecurityError as exc:
        _audit_failure(exc)
        _print_error(exc)
        sys.exit(EXIT_SECURITY_FAILURE)
    except BudgetExceeded as exc:
        _print_error(exc)
        sys.exit(EXIT_BUDGET_EXCEEDED)
    except SecureTrainError as exc:
        _print_error(exc)
        sys.exit(EXIT_USER_ERROR)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except ModuleNotFoundError as exc:
        if (message := missing_extra(exc)) is None:
            raise
        _print_error(Exception(message))
        sys.exit(EXIT_USER_ERROR)
    except Exception as exc:
        from click.exceptions import ClickException

        if isinstance(exc, ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
