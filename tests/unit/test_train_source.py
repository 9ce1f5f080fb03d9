"""The `data` setting is parsed once, into a typed source; bad text is a one-line DataError."""

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from securetrain.crypto import generate_keyset, provider_for_keydir
from securetrain.errors import DataError
from securetrain.sealed import seal_table
from securetrain.train import (
    BuiltinSource,
    FileSource,
    SealedSource,
    parse_sealed,
    parse_source,
)

TABLE = pa.table({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    pacsv.write_csv(TABLE, root / "t.csv")
    pq.write_table(TABLE, root / "t.parquet")
    keys = generate_keyset(root / "keys")
    seal_table(
        TABLE, root / "t.sealed", keys=provider_for_keydir(keys.root), signing_key=keys.signing_key
    )
    (root / "empty-dir").mkdir()
    return root


def test_each_kind_of_source_parses_to_its_type(root: Path) -> None:
    cases = {
        "builtin:breast-cancer": BuiltinSource("builtin:breast-cancer"),
        "builtin:synthetic-fraud?seed=7": BuiltinSource("builtin:synthetic-fraud?seed=7"),
        str(root / "t.csv"): FileSource(root / "t.csv"),
        str(root / "t.parquet"): FileSource(root / "t.parquet"),
        str(root / "t.sealed"): SealedSource(root / "t.sealed"),
    }
    for text, expected in cases.items():
        source = parse_source(text)
        assert source == expected and type(source) is type(expected)
        assert str(source) == text
    assert parse_sealed(str(root / "t.sealed")) == SealedSource(root / "t.sealed")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Name the data to train on"),
        ("builtin:cats", "Unknown built-in dataset 'builtin:cats'"),
        ("builtin:synthetic-fraud?seed=x", "must be a non-negative integer. Found 'x'"),
        ("missing.csv", "Data file not found: 'missing.csv'"),
        ("missing.sealed", "Data file not found: 'missing.sealed'"),
    ],
)
def test_bad_text_is_a_one_line_data_error_naming_the_value(text, message) -> None:
    with pytest.raises(DataError, match=message.replace("?", r"\?")) as info:
        parse_source(text)
    assert "\n" not in str(info.value)


def test_a_directory_that_is_not_sealed_and_a_file_asked_to_be_sealed_are_refused(
    root: Path,
) -> None:
    with pytest.raises(DataError, match="no header.json"):
        parse_source(str(root / "empty-dir"))
    with pytest.raises(DataError, match="Not a sealed dataset"):
        parse_sealed(str(root / "t.csv"))
    with pytest.raises(DataError, match="Not a sealed dataset"):
        parse_sealed("builtin:digits")
