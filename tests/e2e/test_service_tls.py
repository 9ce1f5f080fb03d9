"""`securetrain serve --tls-cert/--tls-key` on loopback: the service speaks HTTPS, sends HSTS,
and cuts off a chunked (no Content-Length) request body once it passes the limit."""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from securetrain.crypto.keys import generate_keyset


def _certificate(root: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = root / "cert.pem", root / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_serve_over_tls_sends_hsts_and_caps_chunked_bodies(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    generate_keyset(tmp_path / "keys")
    (tmp_path / "data").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "securetrain", "serve", "--data-dir", str(tmp_path / "data")]
        + ["--key", str(tmp_path / "keys"), "--store", f"sqlite:///{tmp_path / 'store.db'}"]
        + ["--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=(tmp_path / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    context = ssl.create_default_context(cafile=str(cert))
    try:
        for _ in range(240):
            try:
                conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=5)
                conn.request("GET", "/api/v1/health")
                health = conn.getresponse()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.5)
        assert health.status == 200 and health.getheader("Strict-Transport-Security")
        assert health.getheader("X-Content-Type-Options") == "nosniff"
        assert b'"ok"' in health.read()
        conn.close()
        # 6.4 MB in 64 KiB chunks, no Content-Length: refused once past 1 MiB.
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
        conn.putrequest("POST", "/api/v1/auth/login")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b"x" * (64 << 10)
        try:
            for _ in range(100):
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass  # the server may close the connection before all of it is sent
        refused = conn.getresponse()
        assert refused.status == 413 and b"1048576 bytes" in refused.read()
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
