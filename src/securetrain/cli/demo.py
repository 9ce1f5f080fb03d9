"""``securetrain demo``: keys, a sealed medical dataset, a private and a baseline model, signatures."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from securetrain.attacks.privacy_audit import AttackReport, run_privacy_audit, write_attack_report
from securetrain.bundle import verify_bundle
from securetrain.cli.common import console, training_progress
from securetrain.crypto import KeySetPaths, generate_keyset, provider_for_keydir
from securetrain.crypto.signing import signed_manifest_digest
from securetrain.data import TabularData, load_builtin
from securetrain.outputs import write_file_atomic
from securetrain.screening import screen
from securetrain.sealed import SIGNATURE, Header, seal_dataset, verify_sealed
from securetrain.store import Store, ledger
from securetrain.train import TrainConfig, TrainResult, load_data, train

DEMO_DATA = "builtin:breast-cancer"
DEMO_EPSILON = 1.0
DEMO_BUDGET = 3.0


def _metric(metrics: Mapping[str, float | None], name: str) -> str:
    return f"{metrics[name]:.4f}" if metrics.get(name) is not None else "-"


def _row(name: str, result: TrainResult) -> list[str]:
    """The data holder's view: exact held-out metrics, beside the card's (DP-noised for a
    private model, whose held-out split is private data too)."""
    p, exact = result.card.privacy, result.exact_metrics or {}
    eps = f"{p.epsilon:.3f}" if p.epsilon is not None else "∞ (no DP)"
    delta = f"{p.delta:.0e}" if p.delta is not None else "-"
    return [
        name,
        eps,
        delta,
        _metric(exact, "test_auc"),
        _metric(exact, "test_accuracy"),
        _metric(result.card.metrics.model_dump(), "test_auc"),
    ]


def _seal(run_dir: Path, keys: KeySetPaths) -> tuple[Path, Header]:
    """The built-in records sealed for the demo's keys, and their signature verified."""
    sealed = run_dir / "breast-cancer.sealed"
    header = seal_dataset(
        load_builtin(DEMO_DATA),
        sealed,
        keys=provider_for_keydir(keys.root),
        signing_key=keys.signing_key,
    )
    console.print(
        f"2. sealed {header.rows} patient records: {header.chunks} AES-256-GCM chunk(s), signed manifest"
    )
    verify_sealed(sealed, keys.public_key)
    console.print("3. verified the sealed dataset's signature")
    return sealed, header


def _screen(run_dir: Path, opened: TabularData) -> None:
    """Screen the decrypted records; only row indices go to ``screening.json``."""
    screened = screen(opened)
    report = run_dir / "screening.json"
    write_file_atomic(report, json.dumps(screened.to_json(), indent=2) + "\n")
    found = screened.describe()
    console.print(
        f"   screened {screened.n_rows} rows in memory: {len(screened.flagged_rows)} flagged "
        f"({found}); row indices only in {escape(str(report))}"
    )


def _train_both(run_dir: Path, keys: KeySetPaths, sealed: Path) -> tuple[TrainResult, TrainResult]:
    """The private model from the sealed data, and the baseline on the same records and split."""
    split_seed = secrets.token_hex(16)
    with training_progress("DP-SGD") as update:
        private = train(
            TrainConfig(
                data=str(sealed),
                key_dir=keys.root,
                split_seed=split_seed,
                out=run_dir / "model-dp",
                epsilon=DEMO_EPSILON,
            ),
            progress=update,
        )
    console.print(
        "5. reserved ε in the ledger, then trained from the sealed data, decrypted in memory only"
    )
    # The baseline is not private, so it cannot be charged to the sealed data's budget: it uses
    # the same public scikit-learn records, and the same split, in plaintext.
    with training_progress("baseline") as update:
        baseline = train(
            TrainConfig(
                data=DEMO_DATA,
                key_dir=keys.root,
                split_seed=split_seed,
                out=run_dir / "model-baseline",
                no_dp=True,
            ),
            progress=update,
        )
    return private, baseline


def _results_table(
    private: TrainResult, baseline: TrainResult, audits: dict[str, AttackReport]
) -> Table:
    """Both models side by side: privacy, exact and card metrics, and what the audits found."""
    table_out = Table(title="same records, same split")
    for col in (
        "model",
        "ε",
        "δ",
        "test AUC (exact)",
        "test accuracy (exact)",
        "card's test AUC",
        "MIA AUC",
        "ε lower bound (canaries)",
    ):
        table_out.add_column(col)
    for label, result, key in (
        ("DP-SGD (private)", private, "private"),
        ("baseline (NOT private)", baseline, "baseline"),
    ):
        doc = audits[key].doc
        table_out.add_row(
            *_row(label, result),
            f"{doc['mia']['auc']:.3f}",
            f"{doc['canary']['epsilon_lower_bound']:.3f}",
        )
    return table_out


def demo_command(
    workdir: Annotated[
        Path, typer.Option(help="Where to write the demo's keys, sealed data and bundles.")
    ] = Path("securetrain-demo"),
) -> None:
    """Seal breast-cancer data, screen it, train on it at ε=1 and without DP, sign and verify
    everything, and audit both models."""
    run_dir = workdir / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    say = console.print
    say(f"[bold]securetrain demo[/bold] in {escape(str(run_dir))}")

    keys = generate_keyset(run_dir / "keys")
    say(
        "1. keys: master key, ECDSA P-256 signing pair and X25519 encryption pair in "
        f"{escape(str(keys.root))} (0600)"
    )
    sealed, header = _seal(run_dir, keys)
    opened = load_data(TrainConfig(data=str(sealed), key_dir=keys.root))
    _screen(run_dir, opened)
    with Store() as store:
        ledger.set_budget(
            store,
            dataset_id=header.dataset_id,
            manifest_digest=signed_manifest_digest(sealed, SIGNATURE),
            name=sealed.name,
            epsilon=DEMO_BUDGET,
            delta=1e-5,
        )
        say(
            f"4. privacy budget of the dataset: ε = {DEMO_BUDGET:g} in the ledger ({escape(store.url)})"
        )

        private, baseline = _train_both(run_dir, keys, sealed)
        verify_bundle(private.bundle, keys.public_key)
        verify_bundle(baseline.bundle, keys.public_key)
        say("6. both bundles are signed (OpenSSF model-signing) and verify")
        budget = ledger.status(store, header.dataset_id)
    say(
        f"7. budget: spent ε = {budget.spent:.3f} of {budget.epsilon_budget:g}, "
        f"remaining {budget.remaining:.3f} (PLD composition over runs)"
    )

    with training_progress("privacy audit training") as update:
        audits = {
            "private": run_privacy_audit(private.bundle, opened, progress=update),
            "baseline": run_privacy_audit(
                baseline.bundle, load_builtin(DEMO_DATA), progress=update
            ),
        }
    write_attack_report(run_dir / "audit-dp", audits["private"])
    write_attack_report(run_dir / "audit-baseline", audits["baseline"])
    say(
        "8. privacy-audited both models: membership inference (LOSS, offline LiRA) and a one-run "
        f"canary audit; reports in {escape(str(run_dir / 'audit-dp'))} and audit-baseline"
    )
    console.print(_results_table(private, baseline, audits))
    p = private.card.privacy
    say(f"private bundle:  {escape(str(private.bundle))}")
    say(f"baseline bundle: {escape(str(baseline.bundle))}")
    say(
        f"The private model's card records σ = {p.noise_multiplier:.3f}, q = {p.sample_rate:.4f} and "
        f"{p.steps} Poisson-sampled steps: recompute ε from privacy.events. Check the bundle with\n"
        f"  securetrain verify {escape(str(private.bundle))} --public-key {escape(str(keys.public_key))}"
    )
