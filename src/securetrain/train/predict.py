"""Prediction from a bundle: safetensors weights, preprocessing from the model card."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
from torch import nn

from securetrain.bundle import ModelCard, read_card, read_weights
from securetrain.data import load_table
from securetrain.errors import DataError
from securetrain.train.models import build_model


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


def predict_file(bundle: Path, data: str, out: Path) -> int:
    """Write predictions (class and per-class probabilities) to ``out`` atomically."""
    if out.exists():
        raise DataError(
            f"Output file already exists: {str(out)!r}; choose another --out or remove it."
        )
    if not out.resolve().parent.is_dir():
        raise DataError(f"Output directory does not exist: {str(out.resolve().parent)!r}.")
    card, model = load_model(bundle)
    table = load_table(data)
    probs = predict_probabilities(card, model, table)
    classes = card.model.preprocessing.label.classes
    columns = {"prediction": [classes[i] for i in probs.argmax(1)]}
    columns.update(
        {f"probability_{c}": probs[:, j].astype(np.float64) for j, c in enumerate(classes)}
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.resolve().parent)
    os.close(fd)
    try:
        pacsv.write_csv(pa.table(columns), tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(probs)
