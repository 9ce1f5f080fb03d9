"""Key sets, key providers and authenticated encryption: real cryptography, never mocked."""

import base64
import json
import os
import stat
from pathlib import Path

import pyarrow as pa
import pytest

from securetrain.crypto import (
    EnvironmentKeyProvider,
    KeyFileProvider,
    KeyPermissionError,
    PassphraseProvider,
    aead,
    fingerprint,
    generate_keyset,
    load_public_key,
    provider_for_keydir,
    signature_key_hint,
)
from securetrain.crypto.keys import read_master_key
from securetrain.errors import DataError, DecryptionError
from securetrain.sealed import open_sealed, seal_table, verify_sealed


def test_new_keyset_files_and_permissions(tmp_path: Path) -> None:
    paths = generate_keyset(tmp_path / "k")
    assert stat.S_IMODE(paths.master.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.signing_key.stat().st_mode) == 0o600
    key = read_master_key(paths.master, None)
    assert len(key) == 32
    assert b"PRIVATE KEY" in paths.signing_key.read_bytes()
    assert load_public_key(paths.public_key).curve.name == "secp256r1"
    other = generate_keyset(tmp_path / "k2")
    assert read_master_key(other.master, None) != key  # fresh randomness
    with pytest.raises(DataError, match="already exists"):
        generate_keyset(tmp_path / "k")


@pytest.mark.parametrize("which", ["master", "signing_key"])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_private_key_files_readable_by_others_are_refused(
    tmp_path: Path, which: str, mode: int
) -> None:
    paths = generate_keyset(tmp_path / "k")
    os.chmod(getattr(paths, which), mode)
    with pytest.raises(KeyPermissionError, match=f"mode {mode:04o}.*chmod 600"):
        if which == "master":
            KeyFileProvider(paths.master).master_key()
        else:
            seal_table(
                pa.table({"x": [1]}),
                tmp_path / "D",
                keys=KeyFileProvider(paths.master),
                signing_key=paths.signing_key,
            )


def test_passphrase_wraps_the_master_key_with_scrypt(tmp_path: Path) -> None:
    paths = generate_keyset(tmp_path / "k", passphrase="correct horse")
    doc = json.loads(paths.master.read_text())
    assert doc["kind"] == "scrypt-wrapped" and doc["kdf"]["name"] == "scrypt"
    assert "key" not in doc
    key = PassphraseProvider(paths.master, "correct horse").master_key()
    assert len(key) == 32
    with pytest.raises(DecryptionError):
        PassphraseProvider(paths.master, "wrong horse").master_key()
    with pytest.raises(Exception, match="protected by a passphrase"):
        KeyFileProvider(paths.master).master_key()
    assert b"ENCRYPTED PRIVATE KEY" in paths.signing_key.read_bytes()


def test_providers_share_one_contract(tmp_path: Path, monkeypatch) -> None:
    """Data sealed through one provider opens through any provider holding the same key."""
    raw = generate_keyset(tmp_path / "raw")
    key = KeyFileProvider(raw.master).master_key()
    monkeypatch.setenv("ST_TEST_KEY", base64.b64encode(key).decode())
    providers = [
        KeyFileProvider(raw.master),
        EnvironmentKeyProvider("ST_TEST_KEY"),
        provider_for_keydir(raw.root),
    ]
    table = pa.table({"x": [1, 2, 3], "s": ["a", None, "ü"]})
    for i, sealer in enumerate(providers):
        out = tmp_path / f"D{i}"
        seal_table(table, out, keys=sealer, signing_key=raw.signing_key)
        for opener in providers:
            verified = verify_sealed(out, raw.public_key)
            assert open_sealed(verified, keys=opener).equals(table)
            assert opener.master_key() == key and opener.describe()


def test_environment_provider_errors(monkeypatch) -> None:
    monkeypatch.setenv("ST_BAD_KEY", "not base64!")
    with pytest.raises(DataError, match="base64 32-byte key"):
        EnvironmentKeyProvider("ST_BAD_KEY").master_key()
    monkeypatch.delenv("ST_MISSING", raising=False)
    with pytest.raises(Exception, match="ST_MISSING is not set"):
        EnvironmentKeyProvider("ST_MISSING").master_key()


def test_aead_detects_any_change_and_wrong_key() -> None:
    key = aead.new_key()
    blob = aead.encrypt(key, b"patient 17: positive", b"context")
    assert aead.decrypt(key, blob, b"context") == b"patient 17: positive"
    assert aead.encrypt(key, b"same", b"c") != aead.encrypt(key, b"same", b"c")  # fresh nonces
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(DecryptionError):
            aead.decrypt(key, bytes(bad), b"context")
    with pytest.raises(DecryptionError):
        aead.decrypt(key, blob, b"other context")
    with pytest.raises(DecryptionError):
        aead.decrypt(aead.new_key(), blob, b"context")
    with pytest.raises(DecryptionError):
        aead.decrypt(key, blob[:-1], b"context")


def test_fingerprint_matches_the_model_signing_key_hint(tmp_path: Path) -> None:
    paths = generate_keyset(tmp_path / "k")
    seal_table(
        pa.table({"x": [1]}),
        tmp_path / "D",
        keys=KeyFileProvider(paths.master),
        signing_key=paths.signing_key,
    )
    assert signature_key_hint(tmp_path / "D", "dataset.sig") == fingerprint(
        load_public_key(paths.public_key)
    )
