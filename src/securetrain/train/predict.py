"""Prediction from a bundle: safetensors weights, preprocessing from the model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
from torch import nn

from securetrain.bundle import CARD, SIGNATURE, ModelCard, read_card, read_weights, verify_bundle
from securetrain.data import load_table
from securetrain.errors import ConfigError, DataError, IntegrityError
from securetrain.outputs import check_new_file, write_path_atomic
from securetrain.train.models import build_model


def check_signature(bundle: Path, public_key: Path | None, allow_unsigned: bool) -> None:
    """Refuse an unsigned or tampered bundle unless the caller explicitly allows it."""
    if allow_unsigned:
        return
    if not (bundle / SIGNATURE).is_file():
        if not (bundle / CARD).is_file():
            raise DataError(f"Not a model bundle (no {CARD}): {str(bundle)!r}.")
        raise IntegrityError(
            f"Bundle {str(bundle)!r} is not signed; give `allow_unsigned` to use it anyway."
        )
    if public_key is None:
        raise ConfigError(
            "Give `public_key` to check the bundle's signature (or `allow_unsigned`)."
        )
    verify_bundle(bundle, public_key)


def load_model(bundle: Path) -> tuple[ModelCard, nn.Module]:
    card = read_card(bundle)
    model = build_model(card.model.architecture)
    state = read_weights(bundle)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise DataError(
            f"Weights in {str(bundle)!r} do not match the card's architecture."
        ) from None
    model.eval()
    return card, model


def predict_probabilities(card: ModelCard, model: nn.Module, table: pa.Table) -> np.ndarray:
    x = card.model.preprocessing.transform(table)
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


def predict_file(
    bundle: Path,
    data: str,
    out: Path,
    *,
    public_key: Path | None = None,
    allow_unsigned: bool = False,
) -> int:
    """Write predictions (class and per-class probabilities) to ``out`` atomically, after
    checking the bundle's signature (unless ``allow_unsigned``)."""
    check_new_file(out)
    check_signature(bundle, public_key, allow_unsigned)
    card, model = load_model(bundle)
    table = load_table(data)
    probs = predict_probabilities(card, model, table)
    classes = card.model.preprocessing.label.classes
    columns: dict[str, list[str] | np.ndarray] = {
        "prediction": [classes[i] for i in probs.argmax(1)]
    }
    columns.update(
        {f"probability_{c}": probs[:, j].astype(np.float64) for j, c in enumerate(classes)}
    )
    write_path_atomic(out, lambda tmp: pacsv.write_csv(pa.table(columns), tmp))
    return len(probs)
