"""Screening of training data for duplicates, outliers, label manipulation and poisoning."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.progress import Progress

from securetrain.data import TabularData
from securetrain.errors import DataError
from securetrain.screening.checks import (
    REASONS,
    Finding,
    cross_validated_probabilities,
    exact_duplicates,
    feature_matrix,
    label_issues,
    near_duplicates,
    out_of_distribution,
    spectral_signatures,
)

SCREEN_MODES = ("drop", "warn", "off")

__all__ = ["REASONS", "SCREEN_MODES", "ScreenReport", "describe_counts", "screen"]


@dataclass
class ScreenReport:
    n_rows: int
    findings: list[Finding]

    @property
    def flagged_rows(self) -> np.ndarray:
        mask = np.zeros(self.n_rows, bool)
        for f in self.findings:
            mask |= f.flagged
        return np.flatnonzero(mask)

    def counts(self) -> dict[str, int]:
        return {f.reason: int(f.flagged.sum()) for f in self.findings}

    def describe(self) -> str:
        return describe_counts(self.counts())

    def to_json(self, data: TabularData | None = None) -> dict:
        """``{"n_rows", "checks", "flagged": [{"row", "reasons", "score"}]}``; with ``data``,
        each flagged row also carries its values (only when the caller asked to show rows)."""
        flagged = []
        table = data.to_table() if data is not None else None
        for row in self.flagged_rows.tolist():
            hits = [f for f in self.findings if f.flagged[row]]
            entry: dict = {
                "row": row,
                "reasons": [f.reason for f in hits],
                "score": round(float(max(f.scores[row] for f in hits)), 4),
            }
            if table is not None:
                entry["values"] = {n: table.column(n)[row].as_py() for n in table.column_names}
            flagged.append(entry)
        return {"n_rows": self.n_rows, "checks": self.counts(), "flagged": flagged}


def describe_counts(counts: dict[str, int]) -> str:
    """``label_issue 3, spectral 1``: the checks that flagged anything, with their counts."""
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "nothing"


def screen(data: TabularData, *, labels: bool = True, neural: bool = True) -> ScreenReport:
    """Run every check on ``data`` (in memory) and collect the flagged rows."""
    if data.n_rows == 0:
        raise DataError("There are no rows to screen.")
    steps = 3 + 2 * labels
    findings: list[Finding] = []
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("screening", total=steps)
        x = feature_matrix(data.features)
        exact = exact_duplicates(data)
        findings.append(exact)
        bar.advance(task)
        findings.append(near_duplicates(x, exact.flagged))
        bar.advance(task)
        findings.append(out_of_distribution(x))
        bar.advance(task)
        if labels:
            classes, y = np.unique(data.labels.astype(str), return_inverse=True)
            if len(classes) < 2:
                raise DataError(
                    f"Label screening needs at least two classes. Found {len(classes)}."
                )
            probs = cross_validated_probabilities(x, y, len(classes))
            findings.append(label_issues(probs, y))
            bar.advance(task)
            if neural:
                findings.append(spectral_signatures(x, y))
            bar.advance(task)
    return ScreenReport(data.n_rows, findings)
