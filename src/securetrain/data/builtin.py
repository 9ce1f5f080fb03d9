"""Built-in datasets, addressed as ``builtin:NAME``; they ship with scikit-learn or are generated.

Each comes with a declared schema: bounds and categories that are public knowledge (the
dataset's published data dictionary, the pixel format, the generator's design), so that they
cost no privacy budget. The tables themselves are public, so their digest may appear on a card.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import partial

import numpy as np
import pyarrow as pa

from securetrain.data import hospital
from securetrain.data.dataset import Schema, TabularData
from securetrain.errors import DataError

PREFIX = "builtin:"
FRAUD_ROWS = 50_000
FRAUD_SEED = 20240601


def _digest(table: pa.Table, labels: np.ndarray) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    h = hashlib.sha256(sink.getvalue().to_pybytes())
    h.update("\n".join(labels.tolist()).encode())
    return h.hexdigest()


def _published_ranges(descr: str) -> dict[str, tuple[float, float]]:
    """The Min/Max table of a scikit-learn dataset description (its public data dictionary)."""
    ranges = {}
    for line in descr.splitlines():
        m = re.match(r"^\s*([a-z ]+) \(([a-z ]+)\):\s+([-\d.]+)\s+([-\d.]+)\s*$", line)
        if m:
            base, kind = m.group(1).strip(), m.group(2)
            name = {
                "mean": f"mean {base}",
                "standard error": f"{base} error",
                "worst": f"worst {base}",
            }[kind]
            ranges[name] = (float(m.group(3)), float(m.group(4)))
    return ranges


def breast_cancer() -> TabularData:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    names = [str(n) for n in d.feature_names]
    table = pa.table({n: d.data[:, i] for i, n in enumerate(names)})
    labels = np.array([str(d.target_names[t]) for t in d.target], dtype=object)
    ranges = _published_ranges(d.DESCR)
    missing = [n for n in names if n not in ranges]
    if missing:
        raise DataError(f"The breast-cancer data dictionary lacks ranges for {missing[0]!r}.")
    # The published minimum is often 0; widen each range by 5% so that it is a bound, not a fit.
    bounds = {n: (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)) for n, (lo, hi) in ranges.items()}
    # Sizes, areas and their errors are positive and right-skewed: declared on a log scale.
    schema = Schema(
        bounds=bounds, classes=["malignant", "benign"], transforms=dict.fromkeys(names, "log")
    )
    return TabularData(
        table,
        labels,
        "diagnosis",
        "builtin:breast-cancer",
        _digest(table, labels),
        schema,
        public=True,
    )


def digits() -> TabularData:
    from sklearn.datasets import load_digits

    d = load_digits()
    names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    table = pa.table({n: d.data[:, i] for i, n in enumerate(names)})
    labels = np.array([str(t) for t in d.target], dtype=object)
    # 4-bit grey levels: 0..16 by the format's definition.
    schema = Schema(bounds={n: (0.0, 16.0) for n in names}, classes=[str(i) for i in range(10)])
    return TabularData(
        table,
        labels,
        "digit",
        "builtin:digits",
        _digest(table, labels),
        schema,
        image_shape=(1, 8, 8),
        public=True,
    )


MERCHANTS = [
    "grocery",
    "fuel",
    "online",
    "travel",
    "electronics",
    "restaurant",
    "pharmacy",
    "gambling",
]
_MERCHANT_RISK = np.array([-0.8, -0.4, 0.6, 0.5, 0.9, -0.5, -0.6, 1.4])


def synthetic_fraud(n: int = FRAUD_ROWS, seed: int = FRAUD_SEED) -> TabularData:
    """Generated card transactions, about 2% fraud, from a known logistic model."""
    rng = np.random.default_rng(seed)
    amount = np.round(np.exp(rng.normal(3.6, 1.1, n)).clip(0.5, 20_000), 2)
    hour = rng.integers(0, 24, n)
    merchant = rng.integers(0, len(MERCHANTS), n)
    account_age = rng.gamma(2.0, 400.0, n).clip(0, 10_000).round()
    tx_24h = rng.poisson(2.5, n).clip(0, 60)
    distance = rng.exponential(25.0, n).clip(0, 5_000).round(1)
    foreign = rng.random(n) < 0.08
    card_present = rng.random(n) < 0.55
    night = (hour < 6).astype(float)
    logit = (
        -4.15
        + 0.55 * (np.log(amount) - 3.6)
        + 1.1 * night
        + _MERCHANT_RISK[merchant]
        - 0.0009 * account_age
        + 0.22 * (tx_24h - 2.5)
        + 0.006 * distance
        + 1.3 * foreign
        - 1.2 * card_present
    )
    fraud = rng.random(n) < 1 / (1 + np.exp(-logit))
    table = pa.table(
        {
            "amount": amount,
            "hour": hour,
            "merchant_category": [MERCHANTS[m] for m in merchant],
            "account_age_days": account_age,
            "transactions_24h": tx_24h,
            "distance_km": distance,
            "foreign": foreign.astype(np.int64),
            "card_present": card_present.astype(np.int64),
        }
    )
    labels = np.where(fraud, "fraud", "legitimate").astype(object)
    schema = Schema(
        bounds={
            "amount": (0.0, 5_000.0),
            "hour": (0.0, 23.0),
            "account_age_days": (0.0, 5_000.0),
            "transactions_24h": (0.0, 20.0),
            "distance_km": (0.0, 500.0),
            "foreign": (0.0, 1.0),
            "card_present": (0.0, 1.0),
        },
        categories={"merchant_category": MERCHANTS},
        classes=["legitimate", "fraud"],
    )
    return TabularData(
        table,
        labels,
        "is_fraud",
        f"builtin:synthetic-fraud?seed={seed}",
        _digest(table, labels),
        schema,
        public=True,
    )


def hospital_visits() -> TabularData:
    """Generated visits, 1 to 40 per patient (see :mod:`securetrain.data.hospital`); the
    patient identifier is declared and is not a feature."""
    table, labels = hospital.generate()
    schema = Schema(
        bounds=dict(hospital.BOUNDS),
        categories={"sex": ["female", "male"], "department": list(hospital.DEPARTMENTS)},
        classes=list(hospital.CLASSES),
        transforms={"glucose": "log"},
        identifiers=["patient_id"],
    )
    return TabularData(
        table.drop_columns(["patient_id"]),
        labels,
        "readmitted_30d",
        "builtin:hospital-visits",
        _digest(table, labels),
        schema,
        dropped_identifiers=["patient_id"],
        public=True,
    )


BUILTINS: dict[str, Callable[[], TabularData]] = {
    "breast-cancer": breast_cancer,
    "digits": digits,
    "synthetic-fraud": synthetic_fraud,
    "hospital-visits": hospital_visits,
}


def builtin_loader(spec: str) -> Callable[[], TabularData]:
    """What loads ``builtin:NAME`` or ``builtin:synthetic-fraud?seed=N``, checked but not run:
    :class:`DataError` for an unknown name or a bad seed."""
    name = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    if name.startswith("synthetic-fraud?seed="):
        value = name.split("=", 1)[1]
        if not value.isdigit():
            raise DataError(
                f"Seed of builtin:synthetic-fraud must be a non-negative integer. Found {value!r}."
            )
        return partial(synthetic_fraud, seed=int(value))
    if name not in BUILTINS:
        raise DataError(
            f"Unknown built-in dataset {spec!r}; choose from: "
            + ", ".join(PREFIX + k for k in BUILTINS)
            + "."
        )
    return BUILTINS[name]


def load_builtin(spec: str) -> TabularData:
    """``builtin:NAME`` or ``builtin:synthetic-fraud?seed=N``."""
    return builtin_loader(spec)()
