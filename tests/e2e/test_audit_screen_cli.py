"""Privacy audits and data screening through the CLI, as a user would run them."""

import hashlib
import json
import re
import shutil
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from sklearn.datasets import load_breast_cancer

from tests.helpers import one_error_line, run_cli, write_csv


def _ok(result) -> None:
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """400 rows whose labels are 30% noise, with a declared schema: easy to overfit."""
    root = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0) ^ (rng.random(400) < 0.3)
    columns = {f"f{i}": x[:, i] for i in range(8)}
    columns["label"] = np.where(y, "yes", "no").tolist()
    csv = write_csv(pa.table(columns), root / "noisy.csv")
    schema = root / "schema.json"
    schema.write_text(
        json.dumps(
            {"columns": {f"f{i}": {"bounds": [-4, 4]} for i in range(8)}, "classes": ["no", "yes"]}
        )
    )
    common = ["--data", str(csv), "--label", "label", "--schema", str(schema), "--model", "mlp"]
    overfit = root / "overfit"
    _ok(
        run_cli(
            "train",
            *common,
            "--no-dp",
            "--epochs",
            "300",
            "--batch-size",
            "32",
            "--seed",
            "0",
            "--out",
            str(overfit),
        )
    )
    private = root / "private"
    _ok(run_cli("train", *common, "--epsilon", "1", "--seed", "0", "--out", str(private)))
    return root, csv, overfit, private


def _audit(root: Path, bundle: Path, csv: Path, name: str) -> dict:
    out = root / name
    r = _audit_cli(bundle, csv, out, "--allow-unsigned", "--seed", "0")
    _ok(r)
    doc = json.loads((out / "audit.json").read_text())
    page = (out / "audit.html").read_text()
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 2
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    assert "<polyline" in svgs[0] and "log-log" in svgs[0]
    return doc | {"_stdout": r.stdout, "_stderr": r.stderr, "_html": page}


def test_an_overfitted_model_shows_leakage(noisy) -> None:
    root, csv, overfit, _ = noisy
    doc = _audit(root, overfit, csv, "audit-overfit")
    assert doc["claimed_epsilon"] is None
    assert doc["mia"]["auc"] > 0.65
    assert doc["mia"]["attack"] in doc["mia"]["attacks"]
    assert doc["mia"]["members"] > doc["mia"]["non_members"] > 0
    canary = doc["canary"]
    assert canary["m"] == 100 and canary["confidence"] == 0.95
    assert canary["epsilon_lower_bound"] > 0.3
    assert canary["correct"] > canary["guesses"] / 2
    assert "ε ≥" in doc["_stdout"] and "AUC" in doc["_stdout"]


def test_a_dp_model_at_epsilon_one_stays_within_its_claim(noisy) -> None:
    root, csv, _, private = noisy
    doc = _audit(root, private, csv, "audit-private")
    assert doc["claimed_epsilon"] == pytest.approx(1.0, abs=0.01)
    assert doc["canary"]["epsilon_lower_bound"] <= 1.0
    assert doc["mia"]["auc"] < 0.65
    assert "warning" not in doc and "WARNING" not in doc["_stderr"]
    assert "DP ceiling at ε=" in doc["_html"]


def _audit_cli(bundle: Path, data: Path, out: Path, *extra: str):
    return run_cli(
        "audit", str(bundle), "--data", str(data), "--label", "label", "--out", str(out), *extra
    )


def test_audit_refuses_bad_input(noisy, tmp_path: Path) -> None:
    root, csv, overfit, _ = noisy
    one_error_line(_audit_cli(overfit, csv, tmp_path / "a"), 3, "not signed")
    other = write_csv(pa.table({"f0": [1.0, 2.0], "label": ["no", "yes"]}), tmp_path / "other.csv")
    one_error_line(
        _audit_cli(overfit, other, tmp_path / "b", "--allow-unsigned"),
        2,
        "not what the bundle was trained on",
    )
    existing = tmp_path / "c"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    one_error_line(_audit_cli(overfit, csv, existing, "--allow-unsigned"), 2, "already exists")
    assert (existing / "keep.txt").read_text() == "mine"
    one_error_line(
        _audit_cli(overfit, csv, tmp_path / "d", "--allow-unsigned", "--canaries", "5000"),
        2,
        "exceeds the",
    )
    assert not (tmp_path / "d").exists()


def test_the_card_commits_to_the_csv_without_its_hash(noisy, tmp_path: Path) -> None:
    root, csv, _, private = noisy
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()
    card_text = (private / "model_card.json").read_text()
    assert digest not in card_text.lower()
    identity = json.loads(card_text)["data"]["identity"]
    assert identity["kind"] == "hmac-sha256" and len(identity["value"]) == 64
    key = root / "private.data-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    table = pacsv.read_csv(csv)
    changed = table.set_column(0, "f0", pa.array([9.0, *table.column("f0").to_pylist()[1:]]))
    one_row = write_csv(changed, tmp_path / "one-row-changed.csv")
    args = ("--allow-unsigned", "--canaries", "0")
    one_error_line(
        _audit_cli(private, one_row, tmp_path / "a", *args), 2, "not what the bundle was trained on"
    )
    moved = tmp_path / "elsewhere.key"
    shutil.copy(key, moved)
    one_error_line(
        _audit_cli(private, csv, tmp_path / "b", *args, "--data-key", str(tmp_path / "none")),
        2,
        "give --data-key",
    )
    other_key = tmp_path / "other.key"
    other_key.write_text("ab" * 32 + "\n")
    one_error_line(
        _audit_cli(private, csv, tmp_path / "c", *args, "--data-key", str(other_key)),
        2,
        "not what the bundle was trained on",
    )
    _ok(_audit_cli(private, csv, tmp_path / "d", *args, "--data-key", str(moved)))


def test_screen_finds_injected_label_flips_in_a_csv(tmp_path: Path) -> None:
    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    labels = np.where(data.target == 1, "benign", "malignant")
    flips = rng.choice(len(labels), 40, replace=False)
    labels[flips] = np.where(labels[flips] == "benign", "malignant", "benign")
    columns = {f"x{i}": data.data[:, i] for i in range(data.data.shape[1])}
    columns["diagnosis"] = labels.tolist()
    csv = write_csv(pa.table(columns), tmp_path / "flipped.csv")
    out = tmp_path / "report.json"
    r = run_cli("screen", "--data", str(csv), "--label", "diagnosis", "--out", str(out))
    _ok(r)
    report = json.loads(out.read_text())
    assert report["n_rows"] == len(labels)
    found = {e["row"] for e in report["flagged"] if "label_issue" in e["reasons"]}
    assert len(found & set(flips.tolist())) >= 0.8 * len(flips)
    assert len(found & set(flips.tolist())) >= 0.5 * len(found)
    assert all("values" not in e for e in report["flagged"])
    one_error_line(
        run_cli("screen", "--data", str(csv), "--label", "diagnosis", "--out", str(out)),
        2,
        "already exists",
    )
    one_error_line(
        run_cli("screen", "--data", str(csv), "--label", "nope", "--out", str(tmp_path / "x.json")),
        2,
        "No label column 'nope'",
    )


def test_sealed_data_screened_trained_with_drop_and_audited(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _ok(run_cli("keys", "new", "--out", str(keys)))
    data = load_breast_cancer()
    columns = {f"x{i}": data.data[:, i] for i in range(data.data.shape[1])}
    columns["diagnosis"] = np.where(data.target == 1, "benign", "malignant").tolist()
    table = pa.table(columns)
    table = pa.concat_tables([table, table.slice(0, 5)])  # five exact duplicates
    csv = write_csv(table, tmp_path / "bc.csv")
    sealed = tmp_path / "bc.sealed"
    _ok(run_cli("seal", str(csv), "--key", str(keys), "--label", "diagnosis", "--out", str(sealed)))
    csv.unlink()
    report = tmp_path / "report.json"
    _ok(run_cli("screen", "--data", str(sealed), "--key", str(keys), "--out", str(report)))
    flagged = json.loads(report.read_text())["flagged"]
    duplicates = {e["row"] for e in flagged if "exact_duplicate" in e["reasons"]}
    assert duplicates == set(range(569, 574))
    assert all(set(e) == {"row", "reasons", "score"} for e in flagged)
    bundle = tmp_path / "model"
    r = run_cli(
        "train",
        "--data",
        str(sealed),
        "--key",
        str(keys),
        "--epsilon",
        "1",
        "--classes",
        "benign,malignant",
        "--screen",
        "drop",
        "--out",
        str(bundle),
    )
    _ok(r)
    card = json.loads((bundle / "model_card.json").read_text())
    screening = card["data"]["screening"]
    assert screening["mode"] == "drop" and "exact_duplicate" in screening["checks"]
    assert not any(isinstance(v, int) for v in screening.values()), screening
    assert "not covered by the DP guarantee" in screening["note"]
    out = tmp_path / "audit"
    _ok(
        run_cli(
            "audit",
            str(bundle),
            "--data",
            str(sealed),
            "--key",
            str(keys),
            "--out",
            str(out),
            "--canaries",
            "40",
        )
    )
    doc = json.loads((out / "audit.json").read_text())
    assert doc["canary"]["m"] == 40 and doc["canary"]["epsilon_lower_bound"] <= 1.0
    assert doc["mia"]["members"] + doc["mia"]["non_members"] + doc["mia"]["population_rows"] == (
        574 - len(flagged)
    )
    shutil.rmtree(out)
