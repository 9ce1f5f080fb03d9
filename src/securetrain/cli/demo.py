"""``securetrain demo``: a private model and a non-private baseline on built-in medical data."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from securetrain.cli.common import console, training_progress
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
    workdir: Annotated[Path, typer.Option(help="Where to write the demo's bundles.")] = Path(
        "securetrain-demo"
    ),
) -> None:
    """Train on breast-cancer at ε=1 and without DP, and compare them."""
    run_dir = workdir / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    split_seed = secrets.token_hex(16)
    console.print(
        f"[bold]securetrain demo[/bold]: {DEMO_DATA}, ε = {DEMO_EPSILON}, and a non-private baseline"
    )
    with training_progress("DP-SGD") as update:
        private = train(
            TrainConfig(
                data=DEMO_DATA,
                out=run_dir / "model-dp",
                epsilon=DEMO_EPSILON,
                split_seed=split_seed,
            ),
            progress=update,
        )
    with training_progress("baseline") as update:
        baseline = train(
            TrainConfig(
                data=DEMO_DATA, out=run_dir / "model-baseline", no_dp=True, split_seed=split_seed
            ),
            progress=update,
        )
    table = Table(title="securetrain demo: same data, same split")
    for col in ("model", "ε", "δ", "test AUC", "test accuracy"):
        table.add_column(col)
    table.add_row(*_row("DP-SGD (private)", private))
    table.add_row(*_row("baseline (NOT private)", baseline))
    console.print(table)
    console.print(f"private bundle:  {escape(str(private.bundle))}")
    console.print(f"baseline bundle: {escape(str(baseline.bundle))}")
    p = private.card.privacy
    console.print(
        f"The private model's card ({escape(str(private.bundle / 'model_card.json'))}) records σ = {p.noise_multiplier:.3f}, "
        f"q = {p.sample_rate:.4f} and {p.steps} Poisson-sampled steps: recompute ε from privacy.events."
    )
