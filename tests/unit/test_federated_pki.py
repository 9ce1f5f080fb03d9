"""The deployment's key material: a server certificate that chains to its CA and names the hosts
sites dial, private keys readable only by their owner, and node keys of the kind Flower needs."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from securetrain.errors import ConfigError
from securetrain.federated.pki import (
    check_site_private_key,
    check_site_public_key,
    init_server,
    init_site,
)


def test_server_certificate_chains_to_its_ca_and_names_the_hosts(tmp_path: Path) -> None:
    files = init_server(tmp_path / "tls", ["fed.example.org", "10.0.0.7"])
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(files.certificate.read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fed.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(files.private_key.read_bytes(), None)
    assert key.public_key() == cert.public_key()
    assert files.private_key.stat().st_mode & 0o077 == 0
    # A second CA does not vouch for this certificate.
    other = init_server(tmp_path / "other", ["fed.example.org"])
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(other.ca.read_bytes()))


def test_init_refuses_existing_directory_and_needs_a_host(tmp_path: Path) -> None:
    init_site(tmp_path / "site")
    with pytest.raises(Exception, match="already exists"):
        init_site(tmp_path / "site")
    with pytest.raises(ConfigError, match="--host"):
        init_server(tmp_path / "tls", [])
    assert not (tmp_path / "tls").exists()


def test_site_keys_are_p384_and_private_key_is_owner_only(tmp_path: Path) -> None:
    files = init_site(tmp_path / "site")
    key = serialization.load_ssh_private_key(files.private_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    public = serialization.load_ssh_public_key(files.public_key.read_bytes())
    assert public == key.public_key()
    check_site_public_key(files.public_key)
    check_site_private_key(files.private_key)
    files.private_key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        check_site_private_key(files.private_key)


def test_wrong_kinds_of_site_keys_are_refused(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_pub = tmp_path / "ed.pub"
    ed_pub.write_bytes(
        ed.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    with pytest.raises(ConfigError, match="elliptic"):
        check_site_public_key(ed_pub)
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key\n")
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        check_site_public_key(junk)
    with pytest.raises(ConfigError, match="not found"):
        check_site_public_key(tmp_path / "missing.pub")
    pem = tmp_path / "pem.key"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.chmod(0o600)
    with pytest.raises(ConfigError, match="OpenSSH private key"):
        check_site_private_key(pem)
