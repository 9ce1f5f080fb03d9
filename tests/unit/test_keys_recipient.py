"""Key sets under one scrypt derivation, and data keys wrapped to a recipient's public key
(X25519 + HKDF-SHA256 + AES-256-GCM): real cryptography, attacked, never mocked."""

import base64
import dataclasses
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from securetrain.crypto import aead, generate_keyset, hybrid, provider_for_keydir
from securetrain.crypto.keys import (
    encryption_fingerprint,
    load_encryption_key,
    load_private_key,
    write_private,
)
from securetrain.errors import ConfigError, DecryptionError, UserError
from securetrain.sealed import open_sealed, read_header, seal_table, verify_sealed

PASSPHRASE = "correct horse battery"
TABLE = pa.table({"x": [1, 2, 3], "s": ["a", None, "ü"]})


def test_passphrase_key_set_derives_every_secret_from_one_strong_scrypt(tmp_path: Path) -> None:
    paths = generate_keyset(tmp_path / "k", PASSPHRASE)
    doc = json.loads(paths.master.read_text())
    assert doc["format"] == "securetrain.master_key/v2" and doc["subkeys"] == "HKDF-SHA256"
    kdf = doc["kdf"]
    assert (kdf["name"], kdf["n"], kdf["r"], kdf["p"]) == ("scrypt", 2**17, 8, 1)
    assert len(base64.b64decode(kdf["salt"])) == 16
    for pem in (paths.signing_key, paths.encryption_key):
        assert pem.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        # PBKDF2 tooling (openssl, cryptography) given the passphrase itself opens nothing.
        with pytest.raises(ValueError):
            serialization.load_pem_private_key(pem.read_bytes(), PASSPHRASE.encode())
    assert isinstance(load_private_key(paths.signing_key, PASSPHRASE), ec.EllipticCurvePrivateKey)
    assert isinstance(
        load_encryption_key(paths.encryption_key, PASSPHRASE), x25519.X25519PrivateKey
    )
    with pytest.raises(DecryptionError):
        load_private_key(paths.signing_key, "wrong horse battery")
    with pytest.raises(DecryptionError):
        load_encryption_key(paths.encryption_key, "wrong horse battery")


def test_old_pbkdf2_key_set_is_refused_with_how_to_regenerate(tmp_path: Path) -> None:
    """A version-1 key set: the PEM under the passphrase itself (PBKDF2, 2,048 iterations)."""
    old = tmp_path / "old"
    old.mkdir()
    write_private(
        old / "master.key",
        json.dumps(
            {
                "format": "securetrain.master_key/v1",
                "kind": "scrypt-wrapped",
                "kdf": {"name": "scrypt", "n": 2**14, "r": 8, "p": 1, "salt": "AAAA"},
                "wrapped_key": "AAAA",
            }
        ).encode(),
    )
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    )
    write_private(old / "signing.key.pem", pem)
    with pytest.raises(UserError, match=r"PBKDF2 .*securetrain keys new") as err:
        load_private_key(old / "signing.key.pem", PASSPHRASE)
    assert "\n" not in str(err.value)


def test_wrap_opens_only_with_the_recipients_private_key() -> None:
    recipient, other = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    secret = aead.new_key()
    wrapped = hybrid.wrap(recipient.public_key(), secret, b"dataset 1")
    assert wrapped.recipient == encryption_fingerprint(recipient.public_key())
    assert hybrid.unwrap(recipient, wrapped, b"dataset 1") == secret
    again = hybrid.wrap(recipient.public_key(), secret, b"dataset 1")
    assert again.ephemeral_public_key != wrapped.ephemeral_public_key  # fresh ephemeral key
    assert again.ciphertext != wrapped.ciphertext
    with pytest.raises(DecryptionError):
        hybrid.unwrap(other, wrapped, b"dataset 1")
    with pytest.raises(DecryptionError):
        hybrid.unwrap(recipient, wrapped, b"dataset 2")
    for field in ("ephemeral_public_key", "ciphertext"):
        blob = getattr(wrapped, field)
        for i in range(0, len(blob), 3):
            bad = bytearray(blob)
            bad[i] ^= 0x01
            tampered = dataclasses.replace(wrapped, **{field: bytes(bad)})
            with pytest.raises(DecryptionError):
                hybrid.unwrap(recipient, tampered, b"dataset 1")
    assert hybrid.Wrapped.from_json(wrapped.to_json()) == wrapped


def test_sealed_for_a_recipient_opens_only_with_its_key_set(tmp_path: Path) -> None:
    service = generate_keyset(tmp_path / "service", PASSPHRASE)
    owner, intruder = generate_keyset(tmp_path / "owner"), generate_keyset(tmp_path / "intruder")
    out = tmp_path / "D.sealed"
    header = seal_table(
        TABLE, out, recipient=service.encryption_public_key, signing_key=owner.signing_key
    )
    doc = read_header(out).doc["key_wrapping"]
    assert doc["scheme"] == "X25519-HKDF-SHA256-AES-256-GCM"
    assert header.recipient == encryption_fingerprint(
        load_encryption_key(service.encryption_key, PASSPHRASE).public_key()
    )
    verified = verify_sealed(out, owner.public_key)
    assert open_sealed(verified, keys=provider_for_keydir(service.root, PASSPHRASE)).equals(TABLE)
    for keys in (provider_for_keydir(owner.root), provider_for_keydir(intruder.root)):
        with pytest.raises(DecryptionError):
            open_sealed(verified, keys=keys)
    with pytest.raises(DecryptionError):
        open_sealed(verified, keys=provider_for_keydir(service.root, "wrong horse battery"))


def test_sealing_for_oneself_still_uses_the_own_master_key(tmp_path: Path) -> None:
    own = generate_keyset(tmp_path / "own", PASSPHRASE)
    keys = provider_for_keydir(own.root, PASSPHRASE)
    out = tmp_path / "D.sealed"
    header = seal_table(
        TABLE, out, keys=keys, signing_key=own.signing_key, signing_passphrase=PASSPHRASE
    )
    assert header.recipient is None and "scheme" not in header.doc["key_wrapping"]
    assert open_sealed(verify_sealed(out, own.public_key), keys=keys).equals(TABLE)
    for both_or_neither in ({"keys": keys, "recipient": own.encryption_public_key}, {}):
        with pytest.raises(ConfigError, match="not both or neither"):
            seal_table(TABLE, tmp_path / "E", signing_key=own.signing_key, **both_or_neither)
    assert not os.path.exists(tmp_path / "E")
