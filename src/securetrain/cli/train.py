"""``securetrain train``: differentially private training into a model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from securetrain.cli.common import (
    DataPublicKeyOption,
    KeySetOption,
    PassphraseOption,
    StoreOption,
    console,
    err_console,
    training_progress,
)
from securetrain.screening import describe_counts
from securetrain.store import Store
from securetrain.train import NO_DP_WARNING, TrainConfig, TrainResult, audited_bundle, train


def _features(value: str | None) -> list[str] | None:
    return [f.strip() for f in value.split(",") if f.strip()] if value else None


def _announce_run(run_id: str) -> None:
    err_console.print(
        f"run {run_id}: privacy loss reserved in the ledger (resume with --resume {run_id})"
    )


def _metrics_line(m: dict[str, Any] | None) -> str:
    if m is None:
        return "not computed"
    acc, auc = m.get("test_accuracy"), m.get("test_auc")
    if acc is None:
        return "no test rows"
    return f"accuracy {acc:.4f}" + (f", AUC {auc:.4f}" if auc is not None else "")


def print_summary(result: TrainResult) -> None:
    card = result.card
    p = card.privacy
    if p.mechanism == "dp-sgd":
        console.print(
            f"[green]ε = {p.epsilon:.4f}[/green] at δ = {p.delta:.1e} ({p.accountant}), "
            f"σ = {p.noise_multiplier:.3f}, q = {p.sample_rate:.4f}, {p.steps} steps"
        )
    else:
        console.print(f"[bold red]{NO_DP_WARNING}[/bold red]")
    console.print(f"held-out, exact (not on the card): {_metrics_line(result.exact_metrics)}")
    if p.mechanism == "dp-sgd":
        console.print(f"on the card, DP-noised: {_metrics_line(card.metrics.model_dump())}")
    signed = f", signed by {card.signing.signer}" if card.signing else ", unsigned"
    console.print(f"bundle: {escape(str(result.bundle))}{signed}")


def train_command(
    data: Annotated[
        str, typer.Option(help="builtin:NAME, a CSV/Parquet file, or a sealed dataset directory.")
    ] = "",
    out: Annotated[
        Path | None, typer.Option(help="Directory to write the model bundle to (must not exist).")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="Privacy budget ε for the whole run.")
    ] = None,
    delta: Annotated[float | None, typer.Option(help="δ; default 10^-max(5, digits(n)+1).")] = None,
    label: Annotated[
        str | None, typer.Option(help="Label column (not needed for builtin:).")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated label classes (public; no DP selection needed)."),
    ] = None,
    features: Annotated[str | None, typer.Option(help="Comma-separated feature columns.")] = None,
    schema: Annotated[
        Path | None, typer.Option(help="JSON file of declared bounds/categories/classes.")
    ] = None,
    model: Annotated[str, typer.Option(help="auto, logreg, mlp or cnn.")] = "auto",
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option(help="Expected (Poisson) batch size.")] = None,
    max_grad_norm: Annotated[
        float | None, typer.Option(help="Per-sample clipping bound C.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    accountant: Annotated[str, typer.Option(help="pld (tight) or rdp.")] = "pld",
    keep_identifiers: Annotated[
        bool, typer.Option(help="Keep the columns the schema declares as identifiers.")
    ] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed noise, sampling and split: predictable, recorded as secure_rng=false."
        ),
    ] = None,
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="Train WITHOUT privacy: baselines only.")
    ] = False,
    key: KeySetOption = None,
    passphrase_env: PassphraseOption = None,
    public_key: DataPublicKeyOption = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Write an encrypted checkpoint every N steps (sealed data).")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue a crashed run (its id) from its last checkpoint.")
    ] = None,
    store: StoreOption = None,
    sign_key: Annotated[
        Path | None, typer.Option(help="Sign the bundle with this key instead of the key set's.")
    ] = None,
    screen: Annotated[
        str,
        typer.Option(help="Screen the data first: drop flagged rows, warn about them, or off."),
    ] = "warn",
) -> None:
    """Train a model with DP-SGD and write a bundle (weights + model card)."""
    config = TrainConfig.model_validate(
        {
            "data": data,
            "out": out,
            "label": label,
            "features": _features(features),
            "classes": _features(classes),
            "schema_path": schema,
            "keep_identifiers": keep_identifiers,
            "model": model,
            "epsilon": epsilon,
            "delta": delta,
            "no_dp": no_dp,
            "epochs": epochs,
            "batch_size": batch_size,
            "max_grad_norm": max_grad_norm,
            "lr": lr,
            "accountant": accountant,
            "seed": seed,
            "key_dir": key,
            "passphrase_env": passphrase_env,
            "public_key": public_key,
            "sign_key": sign_key,
            "store": store,
            "checkpoint_every": checkpoint_every,
            "resume": resume,
            "screen": screen,
        }
    )
    if no_dp:
        err_console.print(f"[bold red]WARNING: {NO_DP_WARNING}[/bold red]")
    if seed is not None:
        err_console.print(
            "[yellow]warning: --seed makes noise predictable (secure_rng=false on the card)[/yellow]"
        )
    with training_progress("baseline" if no_dp else "DP-SGD") as update:
        result = train(config, progress=update, on_run=_announce_run)
    for name in result.preprocessor.dropped_identifier_columns:
        err_console.print(
            f"[yellow]warning: dropped column {escape(repr(name))}, declared an identifier "
            "(use --keep-identifiers)[/yellow]"
        )
    with Store(store) as opened:
        audited_bundle(opened, result)
    if result.card.signing is None:
        err_console.print(
            "[yellow]warning: the bundle is not signed (give --key or --sign-key)[/yellow]"
        )
    screening = result.screening
    if screening and screening["flagged"]:
        found = describe_counts(screening["by_check"])
        verb = "dropped" if screening["mode"] == "drop" else "kept (--screen drop removes them)"
        err_console.print(
            f"[yellow]warning: screening flagged {screening['flagged']} of "
            f"{screening['n_rows']} rows ({found}); {verb}. Details: securetrain screen[/yellow]"
        )
    print_summary(result)
