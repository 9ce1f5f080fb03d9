"""``securetrain audit``: the privacy audit of a bundle (membership inference and the one-run
canary audit), written as an attack report; the audit log is ``securetrain log``'s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from securetrain.attacks.privacy_audit import run_privacy_audit, write_attack_report
from securetrain.cli.common import (
    KeySetOption,
    PassphraseOption,
    StoreOption,
    console,
    err_console,
    training_progress,
)
from securetrain.cli.common import audit as log_action
from securetrain.crypto import KeySetPaths
from securetrain.outputs import check_new_dir
from securetrain.train import TrainConfig, check_signature, load_data


def audit_command(
    bundle: Annotated[Path, typer.Argument(help="Model bundle directory to privacy-audit.")],
    data: Annotated[
        str, typer.Option(help="The data the bundle was trained on (builtin:, file or sealed).")
    ],
    out: Annotated[
        Path, typer.Option(help="Directory for the attack report, audit.json and audit.html (new).")
    ],
    label: Annotated[str | None, typer.Option(help="Label column of a CSV/Parquet file.")] = None,
    key: KeySetOption = None,
    passphrase_env: PassphraseOption = None,
    public_key: Annotated[
        Path | None,
        typer.Option(help="Public key that signed the bundle and data (default: the key set's)."),
    ] = None,
    allow_unsigned: Annotated[
        bool, typer.Option("--allow-unsigned", help="Audit a bundle without checking a signature.")
    ] = False,
    data_key: Annotated[
        Path | None,
        typer.Option(
            help="Key of the card's commitment to a CSV/Parquet file (default: BUNDLE.data-key)."
        ),
    ] = None,
    canaries: Annotated[
        int | None,
        typer.Option(help="Canaries for the one-run audit (default: up to 100; 0 skips it)."),
    ] = None,
    reference_models: Annotated[int, typer.Option(help="Reference models for offline LiRA.")] = 4,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed the privacy audit's randomness (reproducible, not secure)."),
    ] = None,
    store: StoreOption = None,
) -> None:
    """Privacy audit: measure what a model leaks (membership inference, and an ε lower bound
    from canaries) and write the attack report."""
    check_new_dir(out)
    bundle_key = public_key or (KeySetPaths(key).public_key if key else None)
    check_signature(bundle, bundle_key, allow_unsigned)
    config = TrainConfig(
        data=data, label=label, key_dir=key, passphrase_env=passphrase_env, public_key=public_key
    )
    table = load_data(config)
    with training_progress("privacy audit training") as update:
        result = run_privacy_audit(
            bundle,
            table,
            canaries=canaries,
            reference_models=reference_models,
            seed=seed,
            progress=update,
            data_key=data_key,
        )
    write_attack_report(out, result)
    doc = result.doc
    log_action(
        "bundle.audited",
        str(bundle),
        {
            "data": data,
            "mia_auc": doc["mia"]["auc"],
            "epsilon_lower_bound": doc["canary"]["epsilon_lower_bound"],
        },
        store=store,
    )
    claimed = doc["claimed_epsilon"]
    mia, can = doc["mia"], doc["canary"]
    console.print(
        f"claimed ε = {'none (no DP)' if claimed is None else f'{claimed:.3f}'} | "
        f"membership inference ({mia['attack']}): AUC {mia['auc']:.3f}, "
        f"TPR {mia['tpr_at_fpr']['0.01']:.3f} at 1% FPR | "
        f"canary audit: ε ≥ {can['epsilon_lower_bound']:.3f} "
        f"({can['correct']}/{can['guesses']} correct, {can['m']} canaries)"
    )
    console.print(f"wrote {escape(str(out / 'audit.json'))} and {escape(str(out / 'audit.html'))}")
    if "warning" in doc:
        err_console.print(f"[bold red]WARNING: {escape(doc['warning'])}[/bold red]")
