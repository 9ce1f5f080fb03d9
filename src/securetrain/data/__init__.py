"""Tables, built-in datasets, declared schemas, preprocessing fitted from declared or DP-released
statistics, and splits."""

from securetrain.data.builtin import BUILTINS, PREFIX, load_builtin
from securetrain.data.dataset import Schema, TabularData, from_table
from securetrain.data.loading import load_dataset
from securetrain.data.preprocess import (
    Preprocessor,
    fit_preprocessor,
    planned_releases,
)
from securetrain.data.split import split_mask
from securetrain.data.tables import file_sha256, load_table

__all__ = [
    "BUILTINS",
    "PREFIX",
    "Preprocessor",
    "Schema",
    "TabularData",
    "file_sha256",
    "fit_preprocessor",
    "from_table",
    "load_builtin",
    "load_dataset",
    "load_table",
    "planned_releases",
    "split_mask",
]
