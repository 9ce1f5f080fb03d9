"""Model bundles: safetensors weights and a JSON model card."""

from securetrain.bundle.card import CARD_FORMAT, ModelCard
from securetrain.bundle.io import (
    CARD,
    WEIGHTS,
    check_output_dir,
    read_card,
    read_weights,
    write_bundle,
)

__all__ = [
    "CARD",
    "CARD_FORMAT",
    "WEIGHTS",
    "ModelCard",
    "check_output_dir",
    "read_card",
    "read_weights",
    "write_bundle",
]
