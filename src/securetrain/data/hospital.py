"""``builtin:hospital-visits``: generated hospital visits, many rows per patient.

A few thousand patients with 1 to 40 visits each, skewed as real visit counts are (most
patients come once or twice, a few chronic patients come dozens of times). Each patient has
lasting traits (age, sex, chronic conditions, an unobserved frailty) that raise both how often
they come and how likely they are to be readmitted, so a patient's rows are correlated: the
case where a per-row guarantee understates what the model learns about one person. The
generator's design is public, so its bounds and categories are declared and cost no budget.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PATIENTS = 3_000
SEED = 20261203
MAX_VISITS = 40
DEPARTMENTS = ["emergency", "cardiology", "oncology", "general", "surgery", "telehealth"]
_DEPARTMENT_RISK = np.array([0.6, 0.4, 0.8, -0.3, 0.5, -0.7])
CLASSES = ["no", "yes"]
BOUNDS = {
    "age": (18.0, 95.0),
    "chronic_conditions": (0.0, 12.0),
    "visit_number": (1.0, float(MAX_VISITS)),
    "days_since_last_visit": (0.0, 730.0),
    "systolic_bp": (80.0, 220.0),
    "heart_rate": (40.0, 160.0),
    "glucose": (50.0, 400.0),
    "length_of_stay_days": (0.0, 60.0),
}


def visits_per_patient(rng: np.random.Generator, frailty: np.ndarray) -> np.ndarray:
    """1 + a negative binomial count whose mean grows with frailty, capped at ``MAX_VISITS``."""
    mean = np.exp(1.3 + 0.6 * frailty)
    shape = 1.2
    extra = rng.negative_binomial(shape, shape / (shape + mean))
    return 1 + np.minimum(extra, MAX_VISITS - 1)


def generate(n_patients: int = PATIENTS, seed: int = SEED) -> tuple[pa.Table, np.ndarray]:
    """The visits table (``patient_id`` first) and its labels (readmitted within 30 days)."""
    rng = np.random.default_rng(seed)
    age = rng.normal(58.0, 17.0, n_patients).clip(18, 95).round()
    female = rng.random(n_patients) < 0.52
    chronic = rng.poisson(0.6 + 0.03 * (age - 18)).clip(0, 12)
    frailty = rng.normal(0.0, 0.8, n_patients) + 0.15 * chronic
    visits = visits_per_patient(rng, frailty)
    patient = np.repeat(np.arange(n_patients), visits)
    n = len(patient)
    visit_number = np.concatenate([np.arange(1, v + 1) for v in visits])
    gap = rng.exponential(365.0 / np.maximum(visits[patient], 1))
    gap = np.where(visit_number == 1, 0.0, gap).clip(0, 730).round()
    department = rng.integers(0, len(DEPARTMENTS), n)
    systolic = (rng.normal(128.0, 18.0, n) + 0.3 * (age[patient] - 58)).clip(80, 220).round()
    heart_rate = rng.normal(78.0, 13.0, n).clip(40, 160).round()
    glucose = np.exp(rng.normal(4.7, 0.25, n) + 0.04 * chronic[patient]).clip(50, 400).round()
    inpatient = rng.random(n) < 0.25 + 0.05 * frailty[patient].clip(-2, 3)
    stay = np.where(inpatient, rng.gamma(1.6, 2.5, n), 0.0).clip(0, 60).round(1)
    logit = (
        -3.4
        + 0.02 * (age[patient] - 58)
        + 0.22 * chronic[patient]
        + 0.9 * frailty[patient]
        + _DEPARTMENT_RISK[department]
        + 0.08 * stay
        + 0.006 * (glucose - 110)
        - 0.002 * gap
    )
    readmitted = rng.random(n) < 1 / (1 + np.exp(-logit))
    table = pa.table(
        {
            "patient_id": [f"P{p:05d}" for p in patient],
            "age": age[patient],
            "sex": np.where(female[patient], "female", "male").tolist(),
            "chronic_conditions": chronic[patient].astype(np.int64),
            "visit_number": visit_number.astype(np.int64),
            "days_since_last_visit": gap,
            "department": [DEPARTMENTS[d] for d in department],
            "systolic_bp": systolic,
            "heart_rate": heart_rate,
            "glucose": glucose,
            "length_of_stay_days": stay,
        }
    )
    labels = np.where(readmitted, "yes", "no").astype(object)
    return table, labels
