"""``train()``: the entry point for every training run."""

from __future__ import annotations

from collections.abc import Callable

from securetrain.bundle import check_output_dir
from securetrain.data import TabularData
from securetrain.errors import ConfigError
from securetrain.sealed import is_sealed
from securetrain.train.config import TrainConfig
from securetrain.train.sealed_run import resume_sealed, resumed_config, train_sealed
from securetrain.train.trainer import (
    ProgressCallback,
    TrainResult,
    load_for,
    resolve_keys,
    train_loaded,
)


def train(
    config: TrainConfig,
    *,
    data: TabularData | None = None,
    progress: ProgressCallback | None = None,
    on_run: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run the whole pipeline and write the bundle to ``config.out``.

    A sealed dataset is verified, its planned privacy loss reserved in the ledger, and only then
    decrypted (into memory); other data is loaded directly. ``config.resume`` continues a crashed
    sealed-data run from its last checkpoint under its original reservation. ``on_run`` is told
    the ledger's run id as soon as the reservation is made.
    """
    if config.resume is not None:
        config = resumed_config(config)
    config.validate_choices()
    check_output_dir(config.out)
    keys = resolve_keys(config)
    if config.resume is not None:
        return resume_sealed(config, keys, progress)
    if data is None and is_sealed(config.data):
        return train_sealed(config, keys, progress, on_run)
    if config.checkpoint_every:
        raise ConfigError(
            "--checkpoint-every needs a sealed dataset and --key (checkpoints are encrypted)."
        )
    return train_loaded(config, data if data is not None else load_for(config), keys, progress)
