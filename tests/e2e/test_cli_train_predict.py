"""The CLI end to end, as a new user would run it."""

import csv
import json
import re
from pathlib import Path

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

from tests.helpers import CANARY, patients_table, run_cli, write_csv


def recompute_epsilon(card: dict) -> float:
    """What a sceptical reader does with the card: only dp_accounting and the card's numbers."""
    p = card["privacy"]
    acc = pld_privacy_accountant.PLDAccountant()
    for e in p["events"]:
        step = dp_event.GaussianDpEvent(e["noise_multiplier"])
        if e["mechanism"] == "poisson_subsampled_gaussian":
            step = dp_event.PoissonSampledDpEvent(e["sample_rate"], step)
        acc.compose(step, e["count"])
    return acc.get_epsilon(p["delta"])


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    keydir = tmp_path_factory.mktemp("keys") / "keys"
    result = run_cli("keys", "new", "--out", str(keydir))
    assert result.returncode == 0, result.stderr
    return keydir


@pytest.fixture(scope="module")
def breast_cancer_bundle(tmp_path_factory, keys: Path) -> Path:
    out = tmp_path_factory.mktemp("bc") / "bundle"
    result = run_cli(
        "train",
        "--data",
        "builtin:breast-cancer",
        "--epsilon",
        "1",
        "--out",
        str(out),
        "--seed",
        "0",
        "--key",
        str(keys),
    )
    assert result.returncode == 0, result.stderr
    assert "ε = " in result.stdout
    exact = re.search(
        r"held-out, exact \(not on the card\): accuracy ([0-9.]+), AUC ([0-9.]+)", result.stdout
    )
    assert exact and float(exact[2]) > 0.9, result.stdout
    assert "on the card, DP-noised: accuracy" in result.stdout
    return out


def test_bundle_has_weights_and_card_and_nothing_pickled(breast_cancer_bundle: Path) -> None:
    assert sorted(p.name for p in breast_cancer_bundle.iterdir()) == [
        "model.safetensors",
        "model.sig",
        "model_card.json",
    ]
    head = (breast_cancer_bundle / "model.safetensors").read_bytes()[:2]
    assert head != b"\x80\x04"  # not a pickle stream


def test_card_epsilon_recomputes_from_events_and_meets_the_target(
    breast_cancer_bundle: Path,
) -> None:
    card = json.loads((breast_cancer_bundle / "model_card.json").read_text())
    p = card["privacy"]
    assert card["format"] == "securetrain.model_card/v1"
    assert p["mechanism"] == "dp-sgd" and p["sampling"] == "poisson" and p["accountant"] == "pld"
    assert p["secure_rng"] is False  # --seed was given
    assert p["delta"] < 1 / 569
    recomputed = recompute_epsilon(card)
    assert recomputed <= 1.0
    assert recomputed == pytest.approx(p["epsilon"], rel=0.02)
    kinds = [e["mechanism"] for e in p["events"]]
    assert kinds == ["gaussian", "poisson_subsampled_gaussian"]
    sgd = p["events"][1]
    assert (sgd["sample_rate"], sgd["noise_multiplier"], sgd["count"]) == (
        p["sample_rate"],
        p["noise_multiplier"],
        p["steps"],
    )
    assert "Gaussian release" in card["metrics"]["note"]
    from sklearn.metrics import roc_auc_score

    from securetrain.bundle import read_card
    from securetrain.data import load_builtin
    from securetrain.train.predict import load_model, predict_probabilities

    data = load_builtin("builtin:breast-cancer")
    _, model = load_model(breast_cancer_bundle)
    probs = predict_probabilities(read_card(breast_cancer_bundle), model, data.to_table())
    assert roc_auc_score(data.labels == "benign", probs[:, 1]) >= 0.98
    assert set(card["software"]) == {"securetrain", "torch", "dp_accounting"}


def test_predict_on_the_bundle(breast_cancer_bundle: Path, keys: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    columns = {str(n): d.data[:, i] for i, n in enumerate(d.feature_names)}
    data = write_csv(pa.table(columns), tmp_path / "patients.csv")
    out = tmp_path / "preds.csv"
    pub = str(keys / "signing.pub.pem")
    result = run_cli(
        "predict",
        str(breast_cancer_bundle),
        "--data",
        str(data),
        "--out",
        str(out),
        "--public-key",
        pub,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 569
    assert list(rows[0]) == ["prediction", "probability_malignant", "probability_benign"]
    truth = ["malignant" if t == 0 else "benign" for t in d.target]
    accuracy = sum(r["prediction"] == t for r, t in zip(rows, truth, strict=True)) / len(rows)
    assert accuracy > 0.9
    for r in rows[:20]:
        assert float(r["probability_malignant"]) + float(r["probability_benign"]) == pytest.approx(
            1, abs=1e-5
        )


def test_planted_unique_string_never_reaches_the_bundle(tmp_path: Path) -> None:
    data = write_csv(patients_table(), tmp_path / "patients.csv")
    out = tmp_path / "bundle"
    result = run_cli(
        "train", "--data", str(data), "--label", "outcome", "--epsilon", "1", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    for f in out.rglob("*"):
        if f.is_file():
            assert CANARY.encode() not in f.read_bytes(), f
    card = json.loads((out / "model_card.json").read_text())
    pre = card["model"]["preprocessing"]
    cols = {c["name"]: c for c in pre["columns"]}
    # Undeclared, the ID column stays a feature, and DP selection releases none of its values.
    assert cols["patient_id"]["categories"] == [] and pre["dropped_identifier_columns"] == []
    assert cols["city"]["categories"] == ["east", "north", "south"]
    assert cols["city"]["categories_source"] == "dp"
    assert pre["label"]["classes_source"] == "dp"
    assert cols["age"]["bounds_source"] == "dp" and cols["age"]["scaling_source"] == "dp"
    assert cols["age"]["kind_source"] == "dp" and cols["city"]["kind_source"] == "dp"
    assert set(pre["dp"]["releases"]) == {
        "counts",
        "column_kinds",
        "numeric_bounds",
        "category_selection",
        "moments",
    }
    # The card's epsilon includes the preprocessing share: more than DP-SGD alone.
    p = card["privacy"]
    acc = pld_privacy_accountant.PLDAccountant()
    sgd = p["events"][1]
    acc.compose(
        dp_event.PoissonSampledDpEvent(
            sgd["sample_rate"], dp_event.GaussianDpEvent(sgd["noise_multiplier"])
        ),
        sgd["count"],
    )
    sgd_only = acc.get_epsilon(p["delta"] - p["delta_partition_selection"])
    assert p["events"][0] == {
        "mechanism": "gaussian",
        "noise_multiplier": pre["dp"]["noise_multiplier"],
        "count": 6,  # the five preprocessing releases and the held-out metrics
    }
    assert sgd_only < p["epsilon"] <= 1.0
    assert p["delta_partition_selection"] > 0
    assert recompute_epsilon(card) == pytest.approx(p["epsilon"], rel=0.02)
    # Exact counts are not released: the card's n_train is the noisy count.
    assert card["data"]["counts"].startswith("Gaussian-noised")


def test_no_dp_baseline_says_so_loudly(tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = run_cli("train", "--data", "builtin:breast-cancer", "--no-dp", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "WITHOUT differential privacy" in result.stderr
    card = json.loads((out / "model_card.json").read_text())
    assert card["privacy"]["mechanism"] == "none" and card["privacy"]["epsilon"] is None
    assert "WITHOUT differential privacy" in card["privacy"]["warning"]


def test_digits_with_cnn(tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = run_cli(
        "train",
        "--data",
        "builtin:digits",
        "--model",
        "cnn",
        "--epsilon",
        "2",
        "--out",
        str(out),
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.stderr
    card = json.loads((out / "model_card.json").read_text())
    assert card["model"]["architecture"]["name"] == "cnn"
    from securetrain.bundle import read_card
    from securetrain.data import load_builtin
    from securetrain.train.predict import load_model, predict_probabilities

    data = load_builtin("builtin:digits")
    _, model = load_model(out)
    probs = predict_probabilities(read_card(out), model, data.to_table())
    classes = read_card(out).model.preprocessing.label.classes
    predicted = [classes[i] for i in probs.argmax(1)]
    assert (predicted == data.labels).mean() > 0.7


def test_predict_bad_input(breast_cancer_bundle: Path, keys: Path, tmp_path: Path) -> None:
    data = write_csv(patients_table(n=50, canary_row=None), tmp_path / "other.csv")
    out = tmp_path / "preds.csv"
    pub = str(keys / "signing.pub.pem")
    r = run_cli(
        "predict",
        str(breast_cancer_bundle),
        "--data",
        str(data),
        "--out",
        str(out),
        "--public-key",
        pub,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "No column 'mean radius' in the data; the model needs:" in r.stderr
    assert not out.exists()
    out.write_text("keep me")
    r = run_cli(
        "predict",
        str(breast_cancer_bundle),
        "--data",
        str(data),
        "--out",
        str(out),
        "--public-key",
        pub,
    )
    assert r.returncode == 2 and "already exists" in r.stderr
    assert out.read_text() == "keep me"
