"""Seal then unseal is bit-exact, for CSV and Parquet, with mixed types, nulls and unicode."""

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from securetrain.crypto import generate_keyset, provider_for_keydir
from securetrain.data import load_table
from securetrain.sealed import open_sealed, read_header, seal_table, verify_sealed
from tests.helpers import run_cli


def mixed_table(n: int = 1000) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "small": pa.array([i % 7 if i % 5 else None for i in range(n)], pa.int8()),
            "score": pa.array([i / 3 if i % 11 else None for i in range(n)], pa.float64()),
            "name": pa.array(
                [["Zoë", "José", "李雷", "مريم", None, "🙂 emoji"][i % 6] for i in range(n)]
            ),
            "flag": pa.array([bool(i % 2) if i % 13 else None for i in range(n)]),
            "when": pa.array([dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(n)]),
            "tags": pa.array([[i, i + 1] if i % 3 else [] for i in range(n)], pa.list_(pa.int32())),
        }
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    return generate_keyset(tmp_path_factory.mktemp("k") / "keys").root


@pytest.mark.parametrize("rows_per_chunk", [1, 97, 1000, None])
def test_round_trip_is_bit_exact_in_memory(tmp_path: Path, keys: Path, rows_per_chunk) -> None:
    table = mixed_table()
    header = seal_table(
        table,
        tmp_path / "D",
        keys=provider_for_keydir(keys),
        signing_key=keys / "signing.key.pem",
        label="flag",
        rows_per_chunk=rows_per_chunk,
    )
    verified = verify_sealed(tmp_path / "D", keys / "signing.pub.pem")
    opened = open_sealed(verified, keys=provider_for_keydir(keys))
    assert opened.equals(table) and opened.schema.equals(table.schema, check_metadata=True)
    assert verified.header.raw == header.raw and header.rows == 1000
    if rows_per_chunk:
        assert header.chunks == -(-1000 // rows_per_chunk)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_cli_seal_unseal_round_trip(tmp_path: Path, keys: Path, fmt: str) -> None:
    table = mixed_table().drop_columns(["tags"]) if fmt == "csv" else mixed_table()
    src = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, src)
    else:
        pq.write_table(table, src)
    original = load_table(src)
    sealed, out = tmp_path / "D.sealed", tmp_path / "back.parquet"
    r = run_cli("seal", str(src), "--key", str(keys), "--label", "flag", "--out", str(sealed))
    assert r.returncode == 0, r.stderr
    r = run_cli("inspect", str(sealed))
    assert r.returncode == 0 and "rows:         1000" in r.stdout and "José" not in r.stdout
    r = run_cli("verify", str(sealed), "--public-key", str(keys / "signing.pub.pem"))
    assert r.returncode == 0 and "verified" in r.stdout
    r = run_cli("unseal", str(sealed), "--key", str(keys), "--out", str(out))
    assert r.returncode == 0, r.stderr
    back = pq.read_table(out)
    assert back.equals(original) and back.schema.equals(original.schema)
    assert read_header(sealed).label == "flag"


def test_ciphertext_holds_no_plaintext(tmp_path: Path, keys: Path) -> None:
    table = pa.table({"secret": ["Zebulon-Marchetti-4471"] * 50})
    seal_table(
        table, tmp_path / "D", keys=provider_for_keydir(keys), signing_key=keys / "signing.key.pem"
    )
    for f in (tmp_path / "D").rglob("*"):
        if f.is_file():
            assert b"Zebulon" not in f.read_bytes()
