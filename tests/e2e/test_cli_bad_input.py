"""Bad input: one line on stderr naming the problem, exit code 2, no traceback, no bundle."""

from pathlib import Path

import pytest

from tests.helpers import patients_table, run_cli, write_csv


def _check_refused(result, out: Path, expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    return write_csv(patients_table(n=200, canary_row=None), tmp_path / "good.csv")


def test_missing_file(tmp_path: Path) -> None:
    out = tmp_path / "b"
    r = run_cli(
        "train",
        "--data",
        str(tmp_path / "nope.csv"),
        "--label",
        "y",
        "--epsilon",
        "1",
        "--out",
        str(out),
    )
    _check_refused(r, out, "Data file not found")


def test_binary_file_is_not_a_table(tmp_path: Path) -> None:
    bad = tmp_path / "image.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    out = tmp_path / "b"
    r = run_cli("train", "--data", str(bad), "--label", "y", "--epsilon", "1", "--out", str(out))
    _check_refused(r, out, "neither CSV nor Parquet")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dear doctor,\nplease find attached\n", "Could not read"),
        ("just one line of prose\nand another\n", "needs a label column and at least one feature"),
    ],
)
def test_text_that_is_not_a_table(tmp_path: Path, text: str, expected: str) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text(text)
    out = tmp_path / "b"
    r = run_cli("train", "--data", str(bad), "--label", "y", "--epsilon", "1", "--out", str(out))
    _check_refused(r, out, expected)


def test_ragged_csv(tmp_path: Path) -> None:
    bad = tmp_path / "ragged.csv"
    bad.write_text("a,b,y\n1,2,0\n3,4,5,6\n")
    out = tmp_path / "b"
    r = run_cli("train", "--data", str(bad), "--label", "y", "--epsilon", "1", "--out", str(out))
    _check_refused(r, out, "Could not read")


def test_no_such_label_column(good_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    r = run_cli(
        "train", "--data", str(good_csv), "--label", "outcme", "--epsilon", "1", "--out", str(out)
    )
    _check_refused(r, out, "No label column 'outcme'")


def test_no_such_feature_column(good_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    r = run_cli(
        "train",
        "--data",
        str(good_csv),
        "--label",
        "outcome",
        "--features",
        "age,weight",
        "--epsilon",
        "1",
        "--out",
        str(out),
    )
    _check_refused(r, out, "No feature column 'weight'")


@pytest.mark.parametrize("content", ["", "age,outcome\n"], ids=["zero-bytes", "header-only"])
def test_empty_table(tmp_path: Path, content: str) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text(content)
    out = tmp_path / "b"
    r = run_cli(
        "train", "--data", str(empty), "--label", "outcome", "--epsilon", "1", "--out", str(out)
    )
    _check_refused(r, out, "empty" if not content else "has no rows")


def test_nans_in_label(tmp_path: Path) -> None:
    bad = tmp_path / "nan.csv"
    bad.write_text(
        "age,outcome\n" + "".join(f"{i},{'' if i % 7 == 0 else i % 2}\n" for i in range(50))
    )
    out = tmp_path / "b"
    r = run_cli(
        "train", "--data", str(bad), "--label", "outcome", "--epsilon", "1", "--out", str(out)
    )
    _check_refused(r, out, "Label column 'outcome' has 8 missing value(s)")


@pytest.mark.parametrize("eps", ["0", "-1", "nan", "inf"])
def test_epsilon_must_be_positive(tmp_path: Path, eps: str) -> None:
    out = tmp_path / "b"
    r = run_cli("train", "--data", "builtin:breast-cancer", f"--epsilon={eps}", "--out", str(out))
    _check_refused(r, out, "Epsilon must be a positive finite number")


def test_epsilon_is_required(tmp_path: Path) -> None:
    out = tmp_path / "b"
    r = run_cli("train", "--data", "builtin:breast-cancer", "--out", str(out))
    _check_refused(r, out, "An epsilon target is required")


def test_unknown_builtin(tmp_path: Path) -> None:
    out = tmp_path / "b"
    r = run_cli("train", "--data", "builtin:cats", "--epsilon", "1", "--out", str(out))
    _check_refused(r, out, "Unknown built-in dataset 'builtin:cats'")


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = run_cli("train", "--data", "builtin:breast-cancer", "--epsilon", "1", "--out", str(out))
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (out / "keep.txt").read_text() == "precious"


def test_predict_refuses_a_directory_that_is_not_a_bundle(tmp_path: Path, good_csv: Path) -> None:
    out = tmp_path / "preds.csv"
    r = run_cli("predict", str(tmp_path), "--data", str(good_csv), "--out", str(out))
    _check_refused(r, out, "Not a model bundle")


def test_bad_schema_file(tmp_path: Path, good_csv: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"columns": {"age": {"bounds": [90, 18]}}}')
    out = tmp_path / "b"
    r = run_cli(
        "train",
        "--data",
        str(good_csv),
        "--label",
        "outcome",
        "--schema",
        str(schema),
        "--epsilon",
        "1",
        "--out",
        str(out),
    )
    _check_refused(
        r, out, "bounds of 'age' must be [lower, upper] with lower < upper. Found [90, 18]"
    )
