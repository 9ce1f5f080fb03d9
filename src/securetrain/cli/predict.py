"""``securetrain predict``: apply a bundle to a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from securetrain.cli.common import console
from securetrain.train.predict import predict_file


def predict_command(
    bundle: Annotated[Path, typer.Argument(help="Model bundle directory.")],
    data: Annotated[str, typer.Option(help="CSV/Parquet file with the model's input columns.")],
    out: Annotated[Path, typer.Option(help="CSV file to write predictions to (must not exist).")],
) -> None:
    """Predict with a model bundle; preprocessing comes from its model card."""
    n = predict_file(bundle, data, out)
    console.print(f"wrote {n} predictions to {escape(str(out))}")
