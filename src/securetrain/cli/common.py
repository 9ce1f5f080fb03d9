"""What the CLI commands share: consoles, the progress bar, error reporting."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from securetrain.store import Store, record
from securetrain.train import StepInfo

PassphraseOption = Annotated[
    str | None, typer.Option(help="Environment variable holding the key set's passphrase.")
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        help="Database URL (default: SECURETRAIN_STORE, else SQLite under SECURETRAIN_HOME)."
    ),
]
KeySetOption = Annotated[
    Path | None,
    typer.Option("--key", help="Key set: decrypts sealed data; its public key checks signatures."),
]
DataPublicKeyOption = Annotated[
    Path | None,
    typer.Option(help="Public key that signed the sealed data (default: the key set's)."),
]

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


@contextmanager
def training_progress(label: str) -> Iterator[Callable[[StepInfo], None]]:
    """A rich progress bar fed by the trainer's per-step callback."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("ε {task.fields[eps]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    task = None

    def update(info: StepInfo) -> None:
        nonlocal task
        if task is None:  # start only once training starts: errors before it print alone
            progress.start()
            task = progress.add_task(label, total=info.steps, loss="-", eps="-")
        eps = (
            f"{info.epsilon:.3f}"
            if info.epsilon is not None
            else ("n/a" if label == "baseline" else "-")
        )
        progress.update(
            task,
            total=info.steps,
            completed=info.step,
            loss=f"{info.loss:.4f}" if info.loss == info.loss else "-",
            eps=eps,
        )

    try:
        yield update
    finally:
        if task is not None:
            progress.stop()


def audit(
    action: str, obj: str, details: dict[str, object] | None = None, *, store: str | None = None
) -> None:
    """Append an entry to the audit log of the given (or default) store."""
    with Store(store) as s:
        record(s, action, obj, details)
