"""``securetrain budget`` and ``securetrain log``: the privacy ledger and the audit log."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from securetrain.cli.common import StoreOption, console
from securetrain.crypto.signing import signed_manifest_digest
from securetrain.sealed import SIGNATURE, read_header
from securetrain.store import Store, entries, export_checkpoint, ledger, verify_log

budget_app = typer.Typer(help="Privacy budgets per sealed dataset.", no_args_is_help=True)
log_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)


@budget_app.command("set")
def budget_set(
    dataset: Annotated[Path, typer.Argument(help="Sealed dataset directory.")],
    epsilon: Annotated[float, typer.Option(help="Total ε allowed over all runs on this dataset.")],
    delta: Annotated[float, typer.Option(help="δ at which the total is composed.")] = 1e-5,
    store: StoreOption = None,
) -> None:
    """Set or change a dataset's privacy budget."""
    header = read_header(dataset)
    digest = signed_manifest_digest(dataset, SIGNATURE)
    ledger.set_budget(
        Store(store),
        dataset_id=header.dataset_id,
        manifest_digest=digest,
        name=dataset.name,
        epsilon=epsilon,
        delta=delta,
    )
    console.print(f"budget of {escape(dataset.name)}: ε = {epsilon:g} at δ = {delta:g}")


def _fmt(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.4f}"


@budget_app.command("show")
def budget_show(
    dataset: Annotated[Path, typer.Argument(help="Sealed dataset directory.")],
    store: StoreOption = None,
) -> None:
    """Spent, reserved and remaining ε, and the runs that spent it."""
    s = ledger.status(Store(store), read_header(dataset).dataset_id)
    console.print(
        f"[bold]{escape(s.name)}[/bold]  budget ε = {s.epsilon_budget:g} at δ = {s.delta:g} ({s.budget_source})"
    )
    console.print(f"spent (completed runs, PLD):   {_fmt(s.spent)}")
    console.print(f"spent + reserved (PLD):        {_fmt(s.reserved)}")
    console.print(f"remaining:                     {_fmt(s.remaining)}")
    console.print(f"sum of run εs (naive):         {_fmt(s.sum_of_epsilons)}")
    table = Table("run", "state", "ε", "basis")
    for r in s.runs:
        table.add_row(r.run_id, r.state, f"{r.epsilon:.4f}", r.basis)
    console.print(table)


@log_app.command("show")
def log_show(
    since: Annotated[
        str | None, typer.Option(help="Only entries at or after this ISO time.")
    ] = None,
    store: StoreOption = None,
) -> None:
    """List audit-log entries."""
    for e in entries(Store(store), since):
        console.print(
            f"{e.seq:>6}  {e.timestamp}  {escape(e.actor)}  {e.action}  {escape(e.object)}",
            highlight=False,
        )


@log_app.command("verify")
def log_verify(
    checkpoint: Annotated[
        Path | None, typer.Option(help="An exported checkpoint to check the log against.")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="Audit public key (default: the store's own).")
    ] = None,
    store: StoreOption = None,
) -> None:
    """Recompute the hash chain and check every signed checkpoint; non-zero exit on any change."""
    n = verify_log(Store(store), public_key=public_key, witness=checkpoint)
    console.print(f"[green]audit log verified[/green]: {n} entries, chain and checkpoints intact")


@log_app.command("export-checkpoint")
def log_export_checkpoint(
    out: Annotated[Path, typer.Option(help="File to write the signed checkpoint to.")],
    store: StoreOption = None,
) -> None:
    """Sign the log's head and write it out for an external witness."""
    doc = export_checkpoint(Store(store), out)
    console.print(
        f"checkpoint at entry {doc['seq']} ({doc['entry_hash'][:16]}…) written to {escape(str(out))}"
    )
