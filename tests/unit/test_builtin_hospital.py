"""builtin:hospital-visits: a seeded table with many, skewed visits per patient, the patient
identifier declared and never a feature, and patients' rows correlated through their traits."""

import numpy as np

from securetrain.data import load_builtin
from securetrain.data.hospital import MAX_VISITS, PATIENTS, generate


def test_visits_per_patient_are_between_1_and_40_and_skewed() -> None:
    table, _ = generate()
    _, counts = np.unique(
        table.column("patient_id").to_numpy(zero_copy_only=False), return_counts=True
    )
    assert len(counts) == PATIENTS
    assert counts.min() == 1 and counts.max() == MAX_VISITS
    # Most patients come a few times, a few come dozens of times.
    assert np.median(counts) <= 6 < np.percentile(counts, 90) < 20
    assert (counts >= 30).sum() >= 10


def test_the_same_seed_gives_the_same_table_and_another_seed_another() -> None:
    a, la = generate(n_patients=200, seed=1)
    b, lb = generate(n_patients=200, seed=1)
    c, _ = generate(n_patients=200, seed=2)
    assert a.equals(b) and (la == lb).all()
    assert not a.equals(c)


def test_patient_traits_are_constant_within_a_patient_and_readmission_clusters() -> None:
    table, labels = generate()
    ids = table.column("patient_id").to_numpy(zero_copy_only=False)
    for trait in ("age", "sex", "chronic_conditions"):
        values = table.column(trait).to_numpy(zero_copy_only=False)
        per_patient = {}
        for pid, value in zip(ids, values, strict=True):
            assert per_patient.setdefault(pid, value) == value, trait
    # A patient's visits share a frailty: the readmission rate of a patient's other visits is
    # higher when this visit was a readmission (intra-patient correlation).
    y = labels == "yes"
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    totals = np.bincount(inverse, weights=y)
    many = counts[inverse] > 1
    others = (totals[inverse] - y)[many] / (counts[inverse][many] - 1)
    assert others[y[many]].mean() > others[~y[many]].mean() + 0.05
    assert 0.08 < y.mean() < 0.25


def test_the_builtin_declares_the_patient_and_never_makes_it_a_feature() -> None:
    data = load_builtin("builtin:hospital-visits")
    assert "patient_id" not in data.features.column_names
    assert data.dropped_identifiers == ["patient_id"]
    assert data.schema.identifiers == ["patient_id"]
    assert data.public and data.source == "builtin:hospital-visits"
    assert set(data.labels) == {"no", "yes"}
