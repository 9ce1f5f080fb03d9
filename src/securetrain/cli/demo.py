"""``securetrain demo``: keys, a sealed medical dataset, a private and a baseline model, signatures."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from securetrain.bundle import verify_bundle
from securetrain.cli.common import console, training_progress
from securetrain.crypto import generate_keyset, provider_for_keydir
from securetrain.data import load_builtin
from securetrain.sealed import seal_dataset, verify_sealed
from securetrain.train import TrainConfig, TrainResult, train

DEMO_DATA = "builtin:breast-cancer"
DEMO_EPSILON = 1.0


def _row(name: str, result: TrainResult) -> list[str]:
    p, m = result.card.privacy, result.card.metrics
    eps = f"{p.epsilon:.3f}" if p.epsilon is not None else "∞ (no DP)"
    delta = f"{p.delta:.0e}" if p.delta is not None else "-"
    auc = f"{m['test_auc']:.4f}" if m.get("test_auc") is not None else "-"
    acc = f"{m['test_accuracy']:.4f}" if m.get("test_accuracy") is not None else "-"
    return [name, eps, delta, auc, acc]


def demo_command(
    workdir: Annotated[
        Path, typer.Option(help="Where to write the demo's keys, sealed data and bundles.")
    ] = Path("securetrain-demo"),
) -> None:
    """Seal breast-cancer data, train on it at ε=1 and without DP, sign and verify everything."""
    run_dir = workdir / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    say = console.print
    say(f"[bold]securetrain demo[/bold] in {escape(str(run_dir))}")

    keys = generate_keyset(run_dir / "keys")
    say(f"1. keys: master key and ECDSA P-256 signing pair in {escape(str(keys.root))} (0600)")

    sealed = run_dir / "breast-cancer.sealed"
    header = seal_dataset(
        load_builtin(DEMO_DATA),
        sealed,
        keys=provider_for_keydir(keys.root),
        signing_key=keys.signing_key,
    )
    say(
        f"2. sealed {header.rows} patient records: {header.chunks} AES-256-GCM chunk(s), signed manifest"
    )

    verify_sealed(sealed, keys.public_key)
    say("3. verified the sealed dataset's signature")

    split_seed = secrets.token_hex(16)
    common = dict(data=str(sealed), key_dir=keys.root, split_seed=split_seed)
    with training_progress("DP-SGD") as update:
        private = train(
            TrainConfig(out=run_dir / "model-dp", epsilon=DEMO_EPSILON, **common), progress=update
        )
    with training_progress("baseline") as update:
        baseline = train(
            TrainConfig(out=run_dir / "model-baseline", no_dp=True, **common), progress=update
        )
    say("4. trained from the sealed data, decrypted in memory only")

    verify_bundle(private.bundle, keys.public_key)
    verify_bundle(baseline.bundle, keys.public_key)
    say("5. both bundles are signed (OpenSSF model-signing) and verify")

    table_out = Table(title="same sealed data, same split")
    for col in ("model", "ε", "δ", "test AUC", "test accuracy"):
        table_out.add_column(col)
    table_out.add_row(*_row("DP-SGD (private)", private))
    table_out.add_row(*_row("baseline (NOT private)", baseline))
    console.print(table_out)
    p = private.card.privacy
    say(f"private bundle:  {escape(str(private.bundle))}")
    say(f"baseline bundle: {escape(str(baseline.bundle))}")
    say(
        f"The private model's card records σ = {p.noise_multiplier:.3f}, q = {p.sample_rate:.4f} and "
        f"{p.steps} Poisson-sampled steps: recompute ε from privacy.events. Check the bundle with\n"
        f"  securetrain verify {escape(str(private.bundle))} --public-key {escape(str(keys.public_key))}"
    )
