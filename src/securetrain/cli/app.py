"""The ``securetrain`` command: one module per command, thin wrappers around the library."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from securetrain.cli.common import err_console
from securetrain.cli.demo import demo_command
from securetrain.cli.predict import predict_command
from securetrain.cli.train import train_command
from securetrain.errors import SecureTrainError

app = typer.Typer(
    name="securetrain",
    help="Secure model training: differential privacy with a computed guarantee.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train_command)
app.command("predict")(predict_command)
app.command("demo")(demo_command)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except SecureTrainError as exc:
        err_console.print(
            f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:
        from click.exceptions import ClickException

        if isinstance(exc, ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
