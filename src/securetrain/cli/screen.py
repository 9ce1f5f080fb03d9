"""``securetrain screen``: check training data for duplicates, outliers and label issues."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from securetrain.cli.common import (
    DataPublicKeyOption,
    KeySetOption,
    PassphraseOption,
    StoreOption,
    audit,
    console,
    err_console,
)
from securetrain.outputs import check_new_file, write_file_atomic
from securetrain.screening import screen
from securetrain.train import TrainConfig, load_data


def screen_command(
    data: Annotated[
        str, typer.Option(help="builtin:NAME, a CSV/Parquet file, or a sealed dataset directory.")
    ],
    out: Annotated[Path, typer.Option(help="JSON report to write (must not exist).")],
    label: Annotated[
        str | None, typer.Option(help="Label column (not needed for builtin: or sealed data).")
    ] = None,
    key: KeySetOption = None,
    passphrase_env: PassphraseOption = None,
    public_key: DataPublicKeyOption = None,
    show_rows: Annotated[
        bool, typer.Option("--show-rows", help="Put the flagged rows' values in the report.")
    ] = False,
    store: StoreOption = None,
) -> None:
    """Screen a dataset before training; the report lists flagged rows by index and reason."""
    check_new_file(out)
    config = TrainConfig(
        data=data, label=label, key_dir=key, passphrase_env=passphrase_env, public_key=public_key
    )
    table = load_data(config)
    report = screen(table)
    doc = report.to_json(table if show_rows else None)
    write_file_atomic(out, json.dumps(doc, indent=2) + "\n")
    audit(
        "data.screened",
        data,
        {"rows": report.n_rows, "flagged": len(doc["flagged"]), "show_rows": show_rows},
        store=store,
    )
    found = report.describe()
    console.print(
        f"screened {report.n_rows} rows: {len(doc['flagged'])} flagged ({found}); "
        f"report in {escape(str(out))}"
    )
    if show_rows and table.sealed:
        err_console.print("[yellow]warning: the report contains rows of a sealed dataset[/yellow]")
