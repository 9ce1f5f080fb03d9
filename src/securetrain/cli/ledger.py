"""``securetrain budget`` and ``securetrain log``: the privacy ledger and the audit log."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from securetrain.cli.common import StoreOption, console
from securetrain.crypto.signing import signed_manifest_digest
from securetrain.outputs import check_new_file, write_file_atomic
from securetrain.sealed import SIGNATURE, read_header
from securetrain.store import AuditKey, Store, entries, ledger, signed_head, verify_log

budget_app = typer.Typer(help="Privacy budgets per sealed dataset.", no_args_is_help=True)
log_app = typer.Typer(
    help="The tamper-evident audit log. Every command that writes it signs its new head with the "
    "audit key set: SECURETRAIN_AUDIT_KEY (passphrase in SECURETRAIN_AUDIT_PASSPHRASE), else "
    "~/.config/securetrain/audit-key (under XDG_CONFIG_HOME when set); it is created on first "
    "use, never in the SQLite database's directory. A team service's store is signed with the "
    "service's --key.",
    no_args_is_help=True,
)

AuditKeyOption = Annotated[
    Path | None,
    typer.Option(
        help="Key set that signs this store's audit log (default: SECURETRAIN_AUDIT_KEY, else "
        "~/.config/securetrain/audit-key; a service's store: the service's --key)."
    ),
]


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
    with Store(store) as s:
        ledger.set_budget(
            s,
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
    with Store(store) as opened:
        s = ledger.status(opened, read_header(dataset).dataset_id)
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
    with Store(store) as s:
        found = entries(s, since)
    for e in found:
        console.print(
            f"{e.seq:>6}  {e.timestamp}  {escape(e.actor)}  {e.action}  {escape(e.object)}",
            highlight=False,
        )


def _log_store(store: str | None, audit_key: Path | None) -> Store:
    return Store(store, audit_key=None if audit_key is None else AuditKey(audit_key))


@log_app.command("verify")
def log_verify(
    head: Annotated[
        Path | None,
        typer.Option(help="A signed head from `log head`: the log must still contain it."),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            help="Audit public key, for a verifier without the key set (default: the key set's, "
            "and the head it recorded is checked too)."
        ),
    ] = None,
    audit_key: AuditKeyOption = None,
    store: StoreOption = None,
) -> None:
    """Recompute the hash chain and check every signed checkpoint; the last entry must be
    covered by one, and the log must contain every signed head given or recorded. Non-zero exit
    on any change."""
    with _log_store(store, audit_key) as s:
        n = verify_log(s, public_key=public_key, head=head)
    console.print(f"[green]audit log verified[/green]: {n} entries, chain and checkpoints intact")


@log_app.command("head")
def log_head(
    out: Annotated[
        Path | None, typer.Option(help="Write the signed head to this new file (default: print).")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="Audit public key (default: the audit key set's).")
    ] = None,
    audit_key: AuditKeyOption = None,
    store: StoreOption = None,
) -> None:
    """Verify the log, then give its signed head (entry number, entry hash, signature, signer)
    for an outside witness to keep; `log verify --head FILE` later proves the log extends it."""
    if out is not None:
        check_new_file(out)
    with _log_store(store, audit_key) as s:
        doc = signed_head(s, public_key=public_key)
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        console.print(text, end="", highlight=False, markup=False)
        return
    write_file_atomic(out, text)
    console.print(
        f"signed head at entry {doc['seq']} ({doc['entry_hash'][:16]}…) written to {escape(str(out))}"
    )
