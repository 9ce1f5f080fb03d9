"""``securetrain predict``: apply a bundle to a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from securetrain.cli.common import audit, console, err_console
from securetrain.train import predict_file


def predict_command(
    bundle: Annotated[Path, typer.Argument(help="Model bundle directory.")],
    data: Annotated[str, typer.Option(help="CSV/Parquet file with the model's input columns.")],
    out: Annotated[Path, typer.Option(help="CSV file to write predictions to (must not exist).")],
    public_key: Annotated[
        Path | None, typer.Option(help="Public key that must have signed the bundle.")
    ] = None,
    allow_unsigned: Annotated[
        bool,
        typer.Option("--allow-unsigned", help="Use the bundle without checking its signature."),
    ] = False,
) -> None:
    """Predict with a model bundle; preprocessing comes from its model card."""
    if allow_unsigned:
        err_console.print(
            "[yellow]warning: --allow-unsigned: the bundle's signature is not checked[/yellow]"
        )
    n = predict_file(bundle, data, out, public_key=public_key, allow_unsigned=allow_unsigned)
    audit("bundle.used_for_prediction", str(bundle), {"verified": not allow_unsigned, "rows": n})
    console.print(f"wrote {n} predictions to {escape(str(out))}")
