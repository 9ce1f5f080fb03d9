"""``securetrain keys new`` (a master key, an ECDSA P-256 signing pair and an X25519 encryption
pair) and ``keys export-public`` (the public encryption key that others seal for)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from securetrain.cli.common import audit, console
from securetrain.crypto import KeySetPaths, fingerprint, load_public_key, passphrase_from_env
from securetrain.crypto.keys import encryption_fingerprint, load_encryption_public_key
from securetrain.errors import UserError
from securetrain.outputs import write_path_atomic
from securetrain.store import Store
from securetrain.train import audited_keyset

keys_app = typer.Typer(help="Create and manage key sets.", no_args_is_help=True)


@keys_app.command("new")
def keys_new(
    out: Annotated[Path, typer.Option(help="Directory for the new key set.")],
    passphrase_env: Annotated[
        str | None,
        typer.Option(help="Wrap the keys with the passphrase in this environment variable."),
    ] = None,
    passphrase: Annotated[
        bool, typer.Option("--passphrase", help="Ask for a passphrase interactively.")
    ] = False,
) -> None:
    """Write master.key, signing.key.pem, encryption.key.pem (0600) and the public halves
    signing.pub.pem and encryption.pub.pem into OUT."""
    secret = passphrase_from_env(passphrase_env)
    if passphrase and secret is None:
        secret = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True)
    if secret is not None and len(secret) < 8:
        raise UserError(f"The passphrase must have at least 8 characters. Found {len(secret)}.")
    with Store() as store:
        paths = audited_keyset(store, out, secret)
    fp = fingerprint(load_public_key(paths.public_key))
    console.print(
        f"master key:   {escape(str(paths.master))} ({'passphrase-wrapped' if secret else 'raw'}, 0600)"
    )
    console.print(f"signing key:  {escape(str(paths.signing_key))} (ECDSA P-256, 0600)")
    console.print(f"public key:   {escape(str(paths.public_key))}")
    console.print(f"fingerprint:  {fp}")
    console.print(
        f"encryption:   {escape(str(paths.encryption_public_key))} (X25519; others seal for it)"
    )


@keys_app.command("export-public")
def keys_export_public(
    key: Annotated[Path, typer.Option("--key", help="Key set directory.")],
    out: Annotated[Path, typer.Option(help="File to write the public encryption key (PEM) to.")],
) -> None:
    """Write the key set's public encryption key, for data owners to seal with `--recipient`."""
    source = KeySetPaths(key).encryption_public_key
    public = load_encryption_public_key(source)
    pem = source.read_bytes()
    write_path_atomic(out, lambda tmp: tmp.write_bytes(pem))
    fp = encryption_fingerprint(public)
    audit("keys.exported", str(out), {"encryption_fingerprint": fp})
    console.print(f"wrote the public encryption key {fp} to {escape(str(out))}")
