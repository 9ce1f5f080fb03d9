"""`keys export-public` and `seal --recipient`: an owner seals for the service with the owner's
own key set; only the service's key set unseals it."""

from pathlib import Path

from securetrain.crypto import generate_keyset
from securetrain.sealed import read_header
from tests.helpers import one_error_line, patients_table, run_cli, write_csv


def test_owner_seals_for_the_service_public_key(tmp_path: Path) -> None:
    for name in ("service", "owner"):
        generate_keyset(tmp_path / name)
    pub = tmp_path / "service.pub.pem"
    r = run_cli("keys", "export-public", "--key", str(tmp_path / "service"), "--out", str(pub))
    assert r.returncode == 0 and "sha256:" in r.stdout
    assert pub.read_bytes() == (tmp_path / "service" / "encryption.pub.pem").read_bytes()
    csv = write_csv(patients_table(40), tmp_path / "t.csv")
    sealed = tmp_path / "D.sealed"
    args = ("--key", str(tmp_path / "owner"), "--recipient", str(pub), "--out", str(sealed))
    r = run_cli("seal", str(csv), *args)
    assert r.returncode == 0, r.stderr
    assert read_header(sealed).recipient in r.stdout
    out = tmp_path / "x.parquet"
    r = run_cli("unseal", str(sealed), "--key", str(tmp_path / "owner"), "--out", str(out))
    one_error_line(r, 3, "decryption failed")
    assert not out.exists()
