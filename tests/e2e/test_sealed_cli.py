"""Sealed data through the CLI, as a new user would: tampering, wrong keys, no plaintext on disk."""

import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from securetrain.crypto import generate_keyset, provider_for_keydir
from securetrain.sealed import seal_table
from tests.helpers import one_error_line, patients_table, run_cli, write_csv


@pytest.fixture(scope="module")
def sealed_csv(tmp_path_factory):
    """A CSV securetrain has never seen, sealed through the CLI."""
    root = tmp_path_factory.mktemp("sealed")
    keys = root / "keys"
    assert run_cli("keys", "new", "--out", str(keys)).returncode == 0
    csv = write_csv(patients_table(n=6000, seed=11, canary_row=None), root / "clinic.csv")
    sealed = root / "clinic.sealed"
    r = run_cli("seal", str(csv), "--key", str(keys), "--label", "outcome", "--out", str(sealed))
    assert r.returncode == 0, r.stderr
    return root, keys, sealed


def _flip(path: Path, offset: int) -> None:
    content = bytearray(path.read_bytes())
    content[offset % len(content)] ^= 0x40
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("target", ["header.json", "chunks/00000000.bin", "dataset.sig"])
def test_one_flipped_byte_fails_verify_and_train(sealed_csv, tmp_path: Path, target: str) -> None:
    import shutil

    root, keys, sealed = sealed_csv
    copy = tmp_path / "copy.sealed"
    shutil.copytree(sealed, copy)
    _flip(copy / target, 1234)
    pub = str(keys / "signing.pub.pem")
    failed = ("signature verification failed", "is damaged")
    one_error_line(run_cli("verify", str(copy), "--public-key", pub), 3, *failed)
    out = tmp_path / "model"
    r = run_cli(
        "train", "--data", str(copy), "--key", str(keys), "--epsilon", "1", "--out", str(out)
    )
    one_error_line(r, 3, *failed)
    assert not out.exists()


def test_train_from_sealed_signs_the_bundle_and_a_flipped_byte_fails_verify_and_predict(
    sealed_csv, tmp_path: Path
) -> None:
    root, keys, sealed = sealed_csv
    pub = str(keys / "signing.pub.pem")
    out = tmp_path / "model"
    r = run_cli(
        "train", "--data", str(sealed), "--key", str(keys), "--epsilon", "1", "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    assert run_cli("verify", str(out), "--public-key", pub).returncode == 0
    import json

    card = json.loads((out / "model_card.json").read_text())
    assert card["data"]["sealed"]["manifest_sha256"].startswith("sha256:")
    assert card["data"]["identity"] == {
        "kind": "sealed-manifest",
        "value": card["data"]["sealed"]["manifest_sha256"],
    }
    assert card["signing"]["signer"] == card["data"]["sealed"]["signer"]
    csv = root / "clinic.csv"
    preds = tmp_path / "p.csv"
    assert (
        run_cli(
            "predict", str(out), "--data", str(csv), "--out", str(preds), "--public-key", pub
        ).returncode
        == 0
    )
    for name in ("model.safetensors", "model_card.json"):
        bad = tmp_path / f"bad-{name}"
        import shutil

        shutil.copytree(out, bad)
        _flip(bad / name, 200)
        one_error_line(
            run_cli("verify", str(bad), "--public-key", pub), 3, "signature verification failed"
        )
        p2 = tmp_path / f"p-{name}.csv"
        r = run_cli("predict", str(bad), "--data", str(csv), "--out", str(p2), "--public-key", pub)
        one_error_line(r, 3, "signature verification failed")
        assert not p2.exists()


def test_unsigned_bundle_needs_allow_unsigned(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert (
        run_cli(
            "train",
            "--data",
            "builtin:breast-cancer",
            "--epsilon",
            "1",
            "--out",
            str(out),
            "--epochs",
            "1",
        ).returncode
        == 0
    )
    data = tmp_path / "x.csv"
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    write_csv(pa.table({str(n): d.data[:, i] for i, n in enumerate(d.feature_names)}), data)
    r = run_cli("predict", str(out), "--data", str(data), "--out", str(tmp_path / "p.csv"))
    one_error_line(r, 3, "is not signed; give --allow-unsigned")
    r = run_cli(
        "predict",
        str(out),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "p.csv"),
        "--allow-unsigned",
    )
    assert r.returncode == 0 and "--allow-unsigned" in r.stderr


def test_wrong_key_and_wrong_passphrase(sealed_csv, tmp_path: Path) -> None:
    root, keys, sealed = sealed_csv
    other = tmp_path / "other"
    assert run_cli("keys", "new", "--out", str(other)).returncode == 0
    r = run_cli(
        "unseal",
        str(sealed),
        "--key",
        str(other),
        "--public-key",
        str(keys / "signing.pub.pem"),
        "--out",
        str(tmp_path / "x.parquet"),
    )
    one_error_line(r, 3, "decryption failed")
    assert not (tmp_path / "x.parquet").exists()
    r = run_cli(
        "train",
        "--data",
        str(sealed),
        "--key",
        str(other),
        "--public-key",
        str(keys / "signing.pub.pem"),
        "--epsilon",
        "1",
        "--out",
        str(tmp_path / "m"),
    )
    one_error_line(r, 3, "decryption failed")
    # A passphrase-protected key set, opened with the wrong passphrase.
    pw = tmp_path / "pw"
    env = {"ST_PASS": "correct horse battery"}
    assert (
        run_cli("keys", "new", "--out", str(pw), "--passphrase-env", "ST_PASS", env=env).returncode
        == 0
    )
    csv = root / "clinic.csv"
    s2 = tmp_path / "pw.sealed"
    assert (
        run_cli(
            "seal",
            str(csv),
            "--key",
            str(pw),
            "--passphrase-env",
            "ST_PASS",
            "--label",
            "outcome",
            "--out",
            str(s2),
            env=env,
        ).returncode
        == 0
    )
    r = run_cli(
        "unseal",
        str(s2),
        "--key",
        str(pw),
        "--passphrase-env",
        "ST_PASS",
        "--out",
        str(tmp_path / "y.parquet"),
        env={"ST_PASS": "wrong horse"},
    )
    one_error_line(r, 3, "decryption failed")
    r = run_cli("unseal", str(s2), "--key", str(pw), "--out", str(tmp_path / "y.parquet"))
    one_error_line(r, 2, "protected by a passphrase")


def test_group_readable_key_is_refused_by_the_cli(sealed_csv, tmp_path: Path) -> None:
    import shutil

    root, keys, sealed = sealed_csv
    loose = tmp_path / "loose"
    shutil.copytree(keys, loose)
    os.chmod(loose / "master.key", 0o644)
    r = run_cli("unseal", str(sealed), "--key", str(loose), "--out", str(tmp_path / "z.parquet"))
    one_error_line(r, 2, "accessible by group or others (mode 0644)")


def test_no_plaintext_on_disk_when_training_from_sealed_data(tmp_path: Path) -> None:
    """The canary lives only in memory and in the ciphertext; after training, no file written in
    HOME, TMPDIR, the working directory or the system temp directory contains it."""
    canary = f"CANARY-{uuid.uuid4().hex}"
    rng = np.random.default_rng(5)
    n = 6000
    table = patients_table(n=n, seed=5, canary_row=None)
    city = table.column("city").to_pylist()
    city[int(rng.integers(n))] = canary
    notes = [canary if i == 4321 else f"note {i % 3}" for i in range(n)]
    table = table.set_column(table.schema.get_field_index("city"), "city", pa.array(city))
    table = table.append_column("notes", pa.array(notes))
    work = tmp_path / "fresh"
    home, tmpdir, cwd = work / "home", work / "tmp", work / "cwd"
    for d in (home, tmpdir, cwd):
        d.mkdir(parents=True)
    keys = generate_keyset(work / "keys")
    sealed = work / "data.sealed"
    seal_table(
        table,
        sealed,
        keys=provider_for_keydir(keys.root),
        signing_key=keys.signing_key,
        label="outcome",
    )
    del table, city, notes
    system_tmp = Path(tempfile.gettempdir())
    started = __import__("time").time()
    r = run_cli(
        "train",
        "--data",
        str(sealed),
        "--key",
        str(keys.root),
        "--epsilon",
        "1",
        "--out",
        str(cwd / "model"),
        cwd=cwd,
        env={"HOME": str(home), "TMPDIR": str(tmpdir), "TMP": str(tmpdir), "TEMP": str(tmpdir)},
    )
    assert r.returncode == 0, r.stderr
    assert canary not in r.stdout + r.stderr
    scanned = 0
    needle = canary.encode()
    for root in (home, tmpdir, cwd, work):
        for f in root.rglob("*"):
            if f.is_file() and not f.is_symlink():
                scanned += 1
                assert needle not in f.read_bytes(), f
    for f in system_tmp.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink() and f.stat().st_mtime >= started - 1:
                scanned += 1
                assert needle not in f.read_bytes(), f
        except OSError:
            continue
    assert scanned >= 4  # at least the bundle, the keys and the sealed files were looked at


def test_standard_model_signing_verifier_accepts_sealed_data_and_bundles(
    sealed_csv, tmp_path: Path
) -> None:
    import subprocess
    import sys

    root, keys, sealed = sealed_csv
    pub = str(keys / "signing.pub.pem")
    out = tmp_path / "model"
    r = run_cli(
        "train",
        "--data",
        str(sealed),
        "--key",
        str(keys),
        "--epsilon",
        "1",
        "--out",
        str(out),
        "--epochs",
        "1",
    )
    assert r.returncode == 0, r.stderr
    for path, sig in ((sealed, "dataset.sig"), (out, "model.sig")):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "model_signing",
                "verify",
                "key",
                str(path),
                "--signature",
                str(path / sig),
                "--public_key",
                pub,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and "Verification succeeded" in done.stdout, (
            done.stdout + done.stderr
        )


def test_interactive_passphrase_prompt(tmp_path: Path) -> None:
    import subprocess
    import sys

    keydir = tmp_path / "k"
    done = subprocess.run(
        [sys.executable, "-m", "securetrain", "keys", "new", "--out", str(keydir), "--passphrase"],
        input="a long passphrase\na long passphrase\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    from securetrain.crypto import PassphraseProvider

    assert len(PassphraseProvider(keydir / "master.key", "a long passphrase").master_key()) == 32
