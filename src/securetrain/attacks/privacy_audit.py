"""The privacy audit: ``run_privacy_audit`` measures what a bundle's model leaks about its
training data (membership inference, the one-run canary audit); ``write_attack_report`` writes
the attack report as ``audit.json`` and ``audit.html``. Not to be confused with the audit log
(in ``securetrain.store``), which records who did what."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from securetrain.attacks.canary import CanaryAudit, check_canaries, run_canary_audit
from securetrain.attacks.mia import lira_offline_scores, loss_scores
from securetrain.attacks.report import COLOURS, Series, histogram, line_plot, render
from securetrain.attacks.stats import roc_summary, tpr_ceiling
from securetrain.bundle import ModelCard
from securetrain.data import TabularData, split_mask
from securetrain.data.identity import check as check_identity
from securetrain.data.identity import key_path as data_key_path
from securetrain.errors import ConfigError, DataError
from securetrain.outputs import write_dir_atomic
from securetrain.train import (
    DPPlan,
    Hyperparameters,
    ProgressCallback,
    build_model,
    fit,
    load_model,
)

DEFAULT_CANARIES = 100


@dataclass
class AttackReport:
    """A privacy audit's result: the report's JSON document, its HTML page, the canary audit."""

    doc: dict
    html: str
    canary: CanaryAudit | None


def _membership(
    card: ModelCard, data: TabularData, data_key: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Encoded rows and who was trained on: the card's split, with screening re-applied, once
    the data is shown to be the trained-on data (``data_key``: the key of its commitment)."""
    check_identity(card.data.identity, data, key=data_key)
    screening = card.data.screening
    if screening is not None and screening.mode == "drop":
        from securetrain.screening import screen

        flagged = screen(data).flagged_rows
        data = data.take(np.setdiff1d(np.arange(data.n_rows), flagged))
    split = card.data.split
    if split.seed is None or split.test_fraction is None:
        raise DataError(
            f"The card records no held-out split to audit against. Found method {split.method!r}."
        )
    test = split_mask(data, seed=split.seed, test_fraction=split.test_fraction)
    pre = card.model.preprocessing
    x = pre.transform(data.features)
    y, known = pre.encode_labels(data.labels)
    return x, y, np.flatnonzero(~test & known), np.flatnonzero(test & known)


def _dp_plan(card: ModelCard, n: int | None = None) -> DPPlan | None:
    """The card's DP-SGD mechanism; with ``n``, its expected batch scaled to ``n`` rows."""
    p = card.privacy
    if p.mechanism != "dp-sgd":
        return None
    if (
        p.sample_rate is None
        or p.noise_multiplier is None
        or p.expected_batch_size is None
        or p.delta is None
    ):
        raise DataError(
            "The card's DP-SGD mechanism is incomplete. Found "
            f"sample_rate={p.sample_rate}, noise_multiplier={p.noise_multiplier}, "
            f"expected_batch_size={p.expected_batch_size}, delta={p.delta}."
        )
    return DPPlan(
        sample_rate=p.sample_rate,
        steps=p.steps,
        noise_multiplier=p.noise_multiplier,
        expected_batch_size=p.expected_batch_size if n is None else p.sample_rate * n,
        accounting_delta=p.delta,
    )


def _reference_models(
    card: ModelCard,
    x: np.ndarray,
    y: np.ndarray,
    count: int,
    *,
    seed: int | None,
    progress: ProgressCallback | None,
) -> list[torch.nn.Module]:
    """Offline LiRA's reference models: trained on population rows with the card's settings."""
    hp = Hyperparameters(**card.training.model_dump())
    references = []
    for i in range(count):
        if seed is not None:
            torch.manual_seed(seed + 1 + i)
        references.append(
            fit(
                build_model(card.model.architecture),
                torch.from_numpy(x),
                torch.from_numpy(y),
                hp=hp,
                dp=_dp_plan(card, len(x)),
                seed=None if seed is None else seed + 1 + i,
                progress=progress,
            )
        )
    return references


def _rounded(attack: dict[str, Any]) -> dict[str, Any]:
    """An attack's AUC, TPR at fixed FPRs and balanced accuracy, to four places."""
    return {
        "auc": round(attack["auc"], 4),
        "tpr_at_fpr": {k: round(v, 4) for k, v in attack["tpr_at_fpr"].items()},
        "balanced_accuracy": round(attack["balanced_accuracy"], 4),
    }


def _mia_doc(
    attacks: dict[str, dict[str, Any]],
    *,
    members: int,
    non_members: int,
    reference_models: int,
    population_rows: int,
) -> dict[str, Any]:
    """``audit.json``'s membership section: the strongest attack (by AUC) first, then each."""
    headline = max(attacks, key=lambda name: attacks[name]["auc"])
    return {
        "attack": headline,
        **_rounded(attacks[headline]),
        "members": int(members),
        "non_members": int(non_members),
        "reference_models": reference_models,
        "population_rows": int(population_rows),
        "attacks": {name: _rounded(a) for name, a in attacks.items()},
    }


def run_privacy_audit(
    bundle: Path,
    data: TabularData,
    *,
    canaries: int | None = None,
    reference_models: int = 4,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    data_key: Path | None = None,
) -> AttackReport:
    """Membership inference (LOSS and offline LiRA) against the bundle's model, and the one-run
    canary audit with the bundle's training settings (``canaries=0`` skips it).

    ``data_key`` is the key of the card's commitment to a private file (default: the
    ``BUNDLE.data-key`` written beside the bundle); sealed and built-in data need none."""
    if reference_models < 2:
        raise ConfigError(
            f"Offline LiRA needs at least 2 reference models. Found {reference_models}."
        )
    card, model = load_model(bundle)
    if card.federated is not None:
        raise ConfigError(
            "Auditing a federated bundle is not supported: its sites' data and training cannot "
            "be replayed in one place."
        )
    x, y, members, outsiders = _membership(card, data, data_key or data_key_path(bundle))
    if len(members) < 2 or len(outsiders) < 4:
        raise DataError(
            f"Too few rows to audit: {len(members)} training and {len(outsiders)} held-out rows."
        )
    m = min(DEFAULT_CANARIES, len(outsiders)) if canaries is None else canaries
    check_canaries(m, len(outsiders))
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    shuffled = rng.permutation(outsiders)
    population, non_members = shuffled[: len(shuffled) // 2], shuffled[len(shuffled) // 2 :]
    hp = Hyperparameters(**card.training.model_dump())
    arch = card.model.architecture
    references = _reference_models(
        card, x[population], y[population], reference_models, seed=seed, progress=progress
    )
    scored = np.concatenate([members, non_members])
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(non_members), bool)]
    attacks = {
        "loss": roc_summary(loss_scores(model, x[scored], y[scored]), is_member),
        "lira-offline": roc_summary(
            lira_offline_scores(model, references, x[scored], y[scored]), is_member
        ),
    }
    claimed, delta = card.privacy.epsilon, card.privacy.delta
    canary = None
    if m:
        canary = run_canary_audit(
            x[members],
            y[members],
            x[outsiders],
            y[outsiders],
            m=m,
            arch=arch,
            hp=hp,
            dp=_dp_plan(card),
            delta=delta or 0.0,
            seed=seed,
            progress=progress,
        )
    doc = {
        "bundle": str(bundle),
        "claimed_epsilon": claimed,
        "claimed_delta": delta,
        "mia": _mia_doc(
            attacks,
            members=len(members),
            non_members=len(non_members),
            reference_models=reference_models,
            population_rows=len(population),
        ),
        "canary": canary.to_json()
        if canary
        else {"m": 0, "guesses": 0, "correct": 0, "epsilon_lower_bound": 0.0, "confidence": 0.95},
        "secure_rng": seed is None,
    }
    warning = broken_claim(canary.epsilon_lower_bound if canary else 0.0, claimed)
    if warning:
        doc["warning"] = warning
    return AttackReport(doc, render(doc, _plots(attacks, claimed, delta, canary)), canary)


def broken_claim(lower_bound: float, claimed: float | None) -> str | None:
    """The warning when an empirical lower bound exceeds the claimed ε (None when it does not)."""
    if claimed is None or lower_bound <= claimed:
        return None
    return (
        f"The empirical lower bound ε ≥ {lower_bound:.3f} exceeds the claimed ε = {claimed:.3f}: "
        "the privacy guarantee is broken or there is a bug. Do not release this model."
    )


def _plots(
    attacks: dict[str, dict[str, Any]],
    claimed: float | None,
    delta: float | None,
    canary: CanaryAudit | None,
) -> list[str]:
    floor = 1e-3
    grid = np.logspace(-3, 0, 200)
    series = [
        Series(name, np.array(a["roc"]["fpr"]), np.array(a["roc"]["tpr"]), COLOURS[i])
        for i, (name, a) in enumerate(attacks.items())
    ]
    series.append(Series("chance", grid, grid, COLOURS[4], dashed=True))
    if claimed is not None:
        series.append(
            Series(
                f"DP ceiling at ε={claimed:.3g}",
                grid,
                tpr_ceiling(grid, claimed, delta or 0),
                COLOURS[2],
                dashed=True,
            )
        )
    plots = [
        line_plot(
            series,
            title="Membership inference ROC (log-log)",
            xlabel="false-positive rate",
            ylabel="true-positive rate",
            log=True,
            lo=floor,
        )
    ]
    if canary is not None:
        plots.append(
            histogram(
                {
                    "inserted": canary.scores[canary.included],
                    "not inserted": canary.scores[~canary.included],
                },
                title="Canary scores (minus loss)",
                xlabel="score",
            )
        )
    return plots


def write_attack_report(out: Path, result: AttackReport) -> None:
    """``out/audit.json`` and ``out/audit.html``, written together or not at all."""

    def fill(tmp: Path) -> None:
        (tmp / "audit.json").write_text(json.dumps(result.doc, indent=2) + "\n", encoding="utf-8")
        (tmp / "audit.html").write_text(result.html, encoding="utf-8")

    write_dir_atomic(out, fill)
