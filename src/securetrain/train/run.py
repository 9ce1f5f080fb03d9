"""``train()``: the entry point for every training run."""

from __future__ import annotations

from collections.abc import Callable

from securetrain.data import TabularData
from securetrain.errors import ConfigError
from securetrain.outputs import check_new_dir
from securetrain.train.card import TrainResult
from securetrain.train.config import TrainConfig, check_runnable
from securetrain.train.loop import ProgressCallback
from securetrain.train.sealed_run import (
    open_verified,
    resume_sealed,
    resumed_config,
    train_sealed,
    verify_source,
)
from securetrain.train.source import SealedSource, parse_sealed, parse_source
from securetrain.train.trainer import load_for, resolve_keys, train_loaded


def load_data(config: TrainConfig) -> TabularData:
    """The data ``config`` names, in memory: a sealed dataset is verified, then decrypted."""
    source = parse_source(config.data)
    keys = resolve_keys(config)
    if isinstance(source, SealedSource):
        return open_verified(config, keys, verify_source(source, keys))
    return load_for(config, source)


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
    check_runnable(config)
    assert config.out is not None  # check_runnable refused a run without one
    check_new_dir(config.out)
    keys = resolve_keys(config)
    if config.resume is not None:
        return resume_sealed(config, keys, parse_sealed(config.data), progress)
    source = parse_source(config.data) if data is None else None
    if isinstance(source, SealedSource):
        return train_sealed(config, keys, source, progress, on_run)
    if config.checkpoint_every:
        raise ConfigError(
            "`checkpoint_every` needs a sealed dataset and `key_dir` (checkpoints are encrypted)."
        )
    if source is not None:
        data = load_for(config, source)
    assert data is not None
    return train_loaded(config, data, keys, progress)
