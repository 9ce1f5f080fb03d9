"""Model bundles: a directory with ``model.safetensors`` and ``model_card.json``; no pickle.

Bundles are written to a temporary sibling directory and renamed into place, so a failed run
never leaves a half-written bundle behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from securetrain.bundle.card import CARD_FORMAT, ModelCard
from securetrain.crypto.keys import fingerprint, public_key_of
from securetrain.crypto.signing import sign_directory, verify_directory
from securetrain.errors import DataError
from securetrain.outputs import write_dir_atomic

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
SIGNATURE = "model.sig"


@dataclass(frozen=True)
class Signer:
    """The ECDSA P-256 private key that signs bundles (and its passphrase, if encrypted)."""

    private_key: Path
    passphrase: str | None = None

    def fingerprint(self) -> str:
        return fingerprint(public_key_of(self.private_key, self.passphrase))


def write_bundle(
    out: Path, state: dict[str, torch.Tensor], card: ModelCard, *, signer: Signer | None = None
) -> Path:
    """Write weights and card, sign them in the OpenSSF model-signing format (``model.sig``)
    when a signer is given, then move the finished bundle into place."""

    def fill(tmp: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS))
        (tmp / CARD).write_text(
            json.dumps(card.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
        )
        if signer is not None:
            sign_directory(tmp, signer.private_key, SIGNATURE, passphrase=signer.passphrase)

    write_dir_atomic(out, fill)
    return out


def read_card(bundle: Path) -> ModelCard:
    path = bundle / CARD
    if not bundle.is_dir():
        raise DataError(f"Bundle directory not found: {str(bundle)!r}.")
    if not path.is_file():
        raise DataError(f"Not a model bundle (no {CARD}): {str(bundle)!r}.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"Model card {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != CARD_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"Model card format must be {CARD_FORMAT!r}. Found {found!r}.")
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise DataError(
            f"Model card {str(path)!r} is invalid at {where}: {first['msg']}."
        ) from None


def read_weights(bundle: Path) -> dict[str, torch.Tensor]:
    path = bundle / WEIGHTS
    if not path.is_file():
        raise DataError(f"Not a model bundle (no {WEIGHTS}): {str(bundle)!r}.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"Could not read weights {str(path)!r}: {exc}") from None


def verify_bundle(bundle: Path, public_key: Path) -> ModelCard:
    """Check the bundle's signature over every file, then parse its card."""
    if not (bundle / CARD).is_file():
        raise DataError(f"Not a model bundle (no {CARD}): {str(bundle)!r}.")
    verify_directory(bundle, public_key, SIGNATURE)
    return read_card(bundle)
