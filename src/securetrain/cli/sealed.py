"""``securetrain seal``, ``inspect``, ``verify`` and ``unseal``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from securetrain.bundle import CARD, SIGNATURE, verify_bundle
from securetrain.cli.common import PassphraseOption, audit, console
from securetrain.crypto import (
    KeySetPaths,
    passphrase_from_env,
    provider_for_keydir,
    signature_key_hint,
    signed_manifest_digest,
)
from securetrain.data import Schema, load_table
from securetrain.errors import DataError
from securetrain.sealed import SIGNATURE as SEALED_SIGNATURE
from securetrain.sealed import is_sealed, read_header
from securetrain.store import Store
from securetrain.train import audited_seal, audited_unseal, audited_verify

KeyOption = Annotated[
    Path, typer.Option("--key", help="Key set directory (from `securetrain keys new`).")
]


def seal_command(
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file to seal.")],
    key: KeyOption,
    out: Annotated[Path, typer.Option(help="Sealed dataset directory to create.")],
    label: Annotated[str | None, typer.Option(help="Label column, recorded in the header.")] = None,
    schema: Annotated[
        Path | None,
        typer.Option(
            help="JSON file of public bounds/categories/classes, kept in the signed header."
        ),
    ] = None,
    recipient: Annotated[
        Path | None,
        typer.Option(
            help="Seal for the holder of this public encryption key (the service's, from "
            "`keys export-public`) instead of for your own master key."
        ),
    ] = None,
    passphrase_env: PassphraseOption = None,
) -> None:
    """Encrypt a table (AES-256-GCM chunks, envelope keys) and sign its manifest with your key."""
    passphrase = passphrase_from_env(passphrase_env)
    declared = Schema.load(schema).to_json() if schema else None
    table = load_table(data)
    with Store() as store:
        header = audited_seal(
            store,
            table,
            out,
            keys=None if recipient else provider_for_keydir(key, passphrase),
            recipient=recipient,
            signing_key=KeySetPaths(key).signing_key,
            signing_passphrase=passphrase,
            label=label,
            source_name=data.name,
            declared_schema=declared,
        )
    console.print(
        f"sealed {header.rows} rows in {header.chunks} chunk(s) into {escape(str(out))}\n"
        f"dataset id {header.dataset_id}, signed by {header.doc['signer']}"
        + (f", for recipient {header.recipient}" if header.recipient else "")
    )


def inspect_command(
    path: Annotated[Path, typer.Argument(help="Sealed dataset directory.")],
) -> None:
    """Show a sealed dataset's header: schema, rows, chunks, signer. Never row contents."""
    header = read_header(path)
    doc = header.doc
    console.print(f"[bold]{escape(str(path))}[/bold]  ({doc['format']})")
    console.print(f"dataset id:   {header.dataset_id}")
    console.print(f"rows:         {header.rows}")
    console.print(f"label:        {escape(str(header.label))}")
    chunking = doc["chunking"]
    console.print(f"chunks:       {chunking['chunks']} x up to {chunking['rows_per_chunk']} rows")
    wrapping = doc["key_wrapping"]
    console.print(
        f"cipher:       {doc['cipher']} (data key wrapped with "
        f"{wrapping.get('scheme', wrapping['cipher'] + ' under the master key')})"
    )
    if header.recipient:
        console.print(f"recipient:    {header.recipient}")
    console.print(
        f"signer:       {doc.get('signer')} (signature hint {signature_key_hint(path, SEALED_SIGNATURE)})"
    )
    table = Table("column", "type", "nullable")
    for col in doc["schema"]:
        table.add_row(escape(col["name"]), escape(col["type"]), str(col["nullable"]))
    console.print(table)


def verify_command(
    path: Annotated[Path, typer.Argument(help="Sealed dataset or model bundle directory.")],
    public_key: Annotated[Path, typer.Option(help="The signer's public key (PEM).")],
) -> None:
    """Check a sealed dataset's or a bundle's signature over every file; exit 0 only if all pass."""
    if is_sealed(path):
        with Store() as store:
            verified = audited_verify(store, path, public_key)
        header, digest = verified.header, verified.manifest_digest
        console.print(
            f"[green]verified[/green] sealed dataset {escape(str(path))}: {header.rows} rows, "
            f"{header.chunks} chunk(s), manifest {digest}"
        )
    elif (path / CARD).is_file():
        card = verify_bundle(path, public_key)
        digest = signed_manifest_digest(path, SIGNATURE)
        audit("bundle.verified", str(path), {"manifest": digest})
        eps = card.privacy.epsilon
        console.print(
            f"[green]verified[/green] model bundle {escape(str(path))}: manifest {digest}, "
            f"ε = {eps if eps is None else round(eps, 4)}"
        )
    else:
        raise DataError(f"Neither a sealed dataset nor a model bundle: {str(path)!r}.")


def unseal_command(
    path: Annotated[Path, typer.Argument(help="Sealed dataset directory.")],
    key: KeyOption,
    out: Annotated[Path, typer.Option(help="Parquet file to write the plaintext to.")],
    public_key: Annotated[
        Path | None, typer.Option(help="Signer's public key (default: the key set's own).")
    ] = None,
    passphrase_env: PassphraseOption = None,
) -> None:
    """Decrypt a sealed dataset to a Parquet file: plaintext on disk, for the data owner only."""
    keys = provider_for_keydir(key, passphrase_from_env(passphrase_env))
    with Store() as store:
        rows = audited_unseal(
            store, path, out, keys=keys, public_key=public_key or KeySetPaths(key).public_key
        )
    console.print(f"wrote {rows} rows to {escape(str(out))} (plaintext)")
