"""Model bundles: safetensors weights, a JSON model card, and an OpenSSF model-signing signature."""

from securetrain.bundle.card import CARD_FORMAT, ModelCard
from securetrain.bundle.io import (
    CARD,
    SIGNATURE,
    WEIGHTS,
    Signer,
    read_card,
    read_weights,
    verify_bundle,
    write_bundle,
)

__all__ = [
    "CARD",
    "CARD_FORMAT",
    "SIGNATURE",
    "WEIGHTS",
    "ModelCard",
    "Signer",
    "read_card",
    "read_weights",
    "verify_bundle",
    "write_bundle",
]
