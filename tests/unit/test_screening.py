"""Screening finds injected label flips, duplicates, outliers and a backdoor poison."""

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from securetrain.data import load_dataset
from securetrain.screening import screen
from securetrain.screening.checks import feature_matrix, spectral_signatures


def _digits():
    return load_dataset("builtin:digits")


def _with_rows(data, features: pa.Table, labels: np.ndarray):
    return replace(
        data,
        features=pa.concat_tables([data.features, features.cast(data.features.schema)]),
        labels=np.concatenate([data.labels, labels]),
    )


@pytest.fixture(scope="module")
def flipped():
    data = _digits()
    rng = np.random.default_rng(0)
    flips = rng.choice(data.n_rows, data.n_rows // 10, replace=False)
    labels = data.labels.copy()
    classes = np.unique(labels)
    for i in flips:
        labels[i] = rng.choice(classes[classes != labels[i]])
    return replace(data, labels=labels), set(flips.tolist())


def test_label_flips_are_found_with_recall_and_precision(flipped) -> None:
    data, flips = flipped
    report = screen(data)
    found = {
        int(r)
        for r in np.flatnonzero(
            next(f for f in report.findings if f.reason == "label_issue").flagged
        )
    }
    recall = len(found & flips) / len(flips)
    precision = len(found & flips) / len(found)
    assert recall >= 0.8, recall
    assert precision >= 0.5, precision


def test_duplicates_and_outliers_are_found() -> None:
    data = _digits()
    rng = np.random.default_rng(1)
    copies = rng.choice(data.n_rows, 15, replace=False)
    near = rng.choice(data.n_rows, 15, replace=False)
    wild = rng.choice(data.n_rows, 10, replace=False)
    exact_rows = data.features.take(pa.array(copies))
    near_table = data.features.take(pa.array(near))
    near_rows = pa.table(
        {
            n: np.asarray(near_table.column(n).to_numpy(), dtype=float) + 1e-6 * (i % 3)
            for i, n in enumerate(near_table.column_names)
        }
    )
    outliers = pa.table({n: rng.uniform(200, 400, size=10) for n in data.features.column_names})
    poisoned = _with_rows(
        _with_rows(
            _with_rows(data, exact_rows, data.labels[copies]),
            near_rows,
            data.labels[near],
        ),
        outliers,
        data.labels[wild],
    )
    report = screen(poisoned, labels=False)
    n = data.n_rows
    by = {f.reason: set(np.flatnonzero(f.flagged).tolist()) for f in report.findings}
    assert set(range(n, n + 15)) <= by["exact_duplicate"]
    assert len(by["exact_duplicate"]) == 15 + _copies_already_in(data)
    assert set(range(n + 15, n + 30)) <= by["near_duplicate"] | by["exact_duplicate"]
    assert set(range(n + 30, n + 40)) <= by["out_of_distribution"]
    assert len(by["out_of_distribution"]) <= 10 + n // 100


def _copies_already_in(data) -> int:
    rows = {
        (tuple(r.values()), label)
        for r, label in zip(data.features.to_pylist(), data.labels, strict=True)
    }
    return data.n_rows - len(rows)


def test_spectral_signature_finds_a_backdoor() -> None:
    """40 sevens with a trigger patch, relabelled as ones (a classic backdoor)."""
    data = _digits()
    x = feature_matrix(data.features)
    y = np.unique(data.labels, return_inverse=True)[1]
    rng = np.random.default_rng(2)
    src = rng.choice(np.flatnonzero(y == 7), 40, replace=False)
    triggered = x[src].copy()
    triggered[:, [0, 1, 8, 9]] = x[:, [0, 1, 8, 9]].max(0) + 3.0
    finding = spectral_signatures(np.vstack([x, triggered]), np.r_[y, np.full(40, 1)])
    poison = np.arange(len(x), len(x) + 40)
    assert finding.flagged[poison].mean() >= 0.8
    assert finding.flagged[: len(x)].mean() <= 0.05


def test_report_lists_rows_without_contents_unless_asked(flipped) -> None:
    data, _ = flipped
    report = screen(data, neural=False)
    doc = report.to_json()
    assert doc["n_rows"] == data.n_rows
    assert doc["flagged"] and all(set(e) == {"row", "reasons", "score"} for e in doc["flagged"])
    shown = report.to_json(data)
    first = shown["flagged"][0]
    assert set(first["values"]) == set(data.features.column_names) | {data.label_name}
    assert first["values"][data.label_name] == data.labels[first["row"]]
