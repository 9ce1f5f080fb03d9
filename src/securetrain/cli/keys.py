"""``securetrain keys new``: a master key and an ECDSA P-256 signing pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from securetrain.cli.common import audit, console
from securetrain.crypto import fingerprint, generate_keyset, load_public_key, passphrase_from_env
from securetrain.errors import UserError

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
    """Write master.key (0600), signing.key.pem (0600) and signing.pub.pem into OUT."""
    secret = passphrase_from_env(passphrase_env)
    if passphrase and secret is None:
        secret = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True)
    if secret is not None and len(secret) < 8:
        raise UserError(f"The passphrase must have at least 8 characters. Found {len(secret)}.")
    paths = generate_keyset(out, secret)
    fp = fingerprint(load_public_key(paths.public_key))
    audit("keys.created", str(out), {"fingerprint": fp, "passphrase": secret is not None})
    console.print(
        f"master key:   {escape(str(paths.master))} ({'passphrase-wrapped' if secret else 'raw'}, 0600)"
    )
    console.print(f"signing key:  {escape(str(paths.signing_key))} (ECDSA P-256, 0600)")
    console.print(f"public key:   {escape(str(paths.public_key))}")
    console.print(f"fingerprint:  {fp}")
