"""Key material for a federated deployment: the server's TLS certificate (with its own CA, so
sites can pin it) and each site's node-authentication key pair (NIST P-384, as Flower needs)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from securetrain.errors import ConfigError
from securetrain.outputs import check_new_dir, write_dir_atomic

CERT_DAYS = 365


@dataclass(frozen=True)
class ServerFiles:
    """The files ``federated init-server`` writes; sites need only ``ca``."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def certificate(self) -> Path:
        return self.root / "server.pem"

    @property
    def private_key(self) -> Path:
        return self.root / "server.key"

    def check(self) -> None:
        for path in (self.ca, self.certificate, self.private_key):
            if not path.is_file():
                raise ConfigError(
                    f"{str(path)!r} is missing; create the server's TLS files with "
                    "`securetrain federated init-server --dir DIR --host NAME`."
                )


@dataclass(frozen=True)
class SiteFiles:
    """The files ``federated init-site`` writes; the server operator registers ``public_key``."""

    root: Path

    @property
    def private_key(self) -> Path:
        return self.root / "node.key"

    @property
    def public_key(self) -> Path:
        return self.root / "node.pub"


def _subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _private_pem(key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def init_server(root: Path, hosts: list[str]) -> ServerFiles:
    """A fresh CA and a server certificate for ``hosts`` (names or IP addresses the sites dial).

    The CA's private key signs the server certificate and is then discarded: nothing else can be
    issued under it, and re-running ``init-server`` is how the certificate is rotated.
    """
    if not hosts:
        raise ConfigError("Name the server with --host (the name or address sites connect to).")
    check_new_dir(root)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetrain federated CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )

    def write(tmp: Path) -> None:
        files = ServerFiles(tmp)
        files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        files.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files.private_key.touch(mode=0o600)
        files.private_key.write_bytes(_private_pem(key, serialization.PrivateFormat.PKCS8))

    write_dir_atomic(root, write)
    return ServerFiles(root)


def init_site(root: Path) -> SiteFiles:
    """A site's node-authentication key pair: the server registers the public key, and only the
    holder of the private key can then connect as that site."""
    check_new_dir(root)
    key = ec.generate_private_key(ec.SECP384R1())

    def write(tmp: Path) -> None:
        files = SiteFiles(tmp)
        files.private_key.touch(mode=0o600)
        files.private_key.write_bytes(_private_pem(key, serialization.PrivateFormat.OpenSSH))
        files.public_key.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + b"\n"
        )

    write_dir_atomic(root, write)
    return SiteFiles(root)


def check_site_public_key(path: Path) -> None:
    """A site key the server is asked to register must be a P-384 (NIST curve) public key."""
    if not path.is_file():
        raise ConfigError(f"Site public key not found: {str(path)!r}.")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, UnicodeDecodeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{str(path)!r} is not an OpenSSH public key; use the node.pub that "
            "`securetrain federated init-site` wrote."
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(
            f"{str(path)!r} is a {type(key).__name__}; node authentication needs an elliptic-"
            "curve (P-384) key from `securetrain federated init-site`."
        )


def check_site_private_key(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"Site node key not found: {str(path)!r}.")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, TypeError, UnicodeDecodeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{str(path)!r} is not an unencrypted OpenSSH private key; use the node.key that "
            "`securetrain federated init-site` wrote."
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{str(path)!r} is not an elliptic-curve key.")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ConfigError(
            f"{str(path)!r} can be read by other users (mode {oct(path.stat().st_mode & 0o777)}); "
            "run `chmod 600` on it."
        )
