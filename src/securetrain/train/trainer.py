"""A run on data in memory: keys, a plaintext table, screening, then the plan
(:mod:`~securetrain.train.plan`), the loop (:mod:`~securetrain.train.loop`) and the card and
bundle (:mod:`~securetrain.train.card`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from securetrain.bundle import Signer
from securetrain.crypto import KeyProvider, KeySetPaths, passphrase_from_env, provider_for_keydir
from securetrain.data import Schema, TabularData, load_builtin
from securetrain.data.loading import load_file
from securetrain.errors import DataError
from securetrain.privacy import events_from_json
from securetrain.train.card import TrainResult, dp_privacy, finish, no_dp_privacy
from securetrain.train.checkpoint import TrainingState
from securetrain.train.config import KeySettings, TrainConfig
from securetrain.train.loop import ProgressCallback, train_dp, train_plain
from securetrain.train.models import build_model
from securetrain.train.plan import MechanismPlan, RunPlan, encode, make_plan, split
from securetrain.train.source import BuiltinSource, FileSource

CheckpointCallback = Callable[[RunPlan, TrainingState], None]


@dataclass(frozen=True)
class ResolvedKeys:
    provider: KeyProvider | None
    public_key: Path | None
    signer: Signer | None


def resolve_keys(config: KeySettings) -> ResolvedKeys:
    """The master-key provider, the public key that checks sealed data, and the bundle signer."""
    passphrase = passphrase_from_env(config.passphrase_env)
    paths = KeySetPaths(config.key_dir) if config.key_dir else None
    provider = provider_for_keydir(config.key_dir, passphrase) if config.key_dir else None
    public_key = config.public_key or (paths.public_key if paths else None)
    sign_key = config.sign_key or (paths.signing_key if paths else None)
    signer = Signer(sign_key, passphrase) if sign_key else None
    return ResolvedKeys(provider, public_key, signer)


def apply_classes(config: TrainConfig, data: TabularData) -> TabularData:
    if config.classes is not None:
        # Declared classes are public; rows whose label is not among them are not trained on.
        data.schema = replace(data.schema, classes=list(config.classes))
    return data


def load_for(config: TrainConfig, source: BuiltinSource | FileSource) -> TabularData:
    """A plaintext table or built-in dataset (sealed data goes through the ledger in train())."""
    schema = Schema.load(config.schema_path) if config.schema_path else None
    if isinstance(source, BuiltinSource):
        data = load_builtin(source.spec)
        if schema is not None:
            data.schema = schema
    else:
        data = load_file(
            source.path,
            label=config.label,
            features=config.features,
            schema=schema,
            keep_identifiers=config.keep_identifiers,
        )
    return apply_classes(config, data)


def screen_for_training(
    config: TrainConfig, data: TabularData
) -> tuple[TabularData, dict[str, Any] | None]:
    """Screen the data before training (``config.screen``): ``drop`` removes flagged rows,
    ``warn`` keeps them. Returns the exact summary (counts per check), for the data's holder."""
    if config.screen == "off":
        return data, None
    from securetrain.screening import screen

    report = screen(data)
    flagged = report.flagged_rows
    summary: dict[str, Any] = {
        "mode": config.screen,
        "n_rows": report.n_rows,
        "flagged": len(flagged),
        "by_check": report.counts(),
        "dropped": len(flagged) if config.screen == "drop" else 0,
    }
    if config.screen == "drop" and len(flagged):
        keep = np.setdiff1d(np.arange(data.n_rows), flagged)
        if len(keep) == 0:
            raise DataError(
                f"Screening flagged all {data.n_rows} rows; nothing is left to train on."
            )
        data = data.take(keep)
    return data, summary


def train_loaded(
    config: TrainConfig,
    data: TabularData,
    keys: ResolvedKeys,
    progress: ProgressCallback | None,
    *,
    plan: RunPlan | None = None,
    reserved: MechanismPlan | None = None,
    resume: TrainingState | None = None,
    on_checkpoint: CheckpointCallback | None = None,
) -> TrainResult:
    """Train on data in memory: under ``reserved`` (a ledger reservation's mechanism) when
    given, or from ``plan`` (a checkpoint's) when resuming, else planning afresh."""
    data, screening = screen_for_training(config, data)
    if plan is None:
        plan, train_data, test_data = make_plan(config, data, reserved=reserved)
    else:
        train_data, test_data = split(data, plan.split_seed, config.test_fraction)
    enc = encode(plan, train_data, test_data)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    model = build_model(plan.arch)
    if plan.dp is None:
        steps = train_plain(
            model, enc.x_train, enc.y_train, hp=plan.hp, seed=config.seed, progress=progress
        )
        privacy = no_dp_privacy(plan, steps=steps, seed=config.seed)
    else:
        optimizer = train_dp(
            model,
            enc.x_train,
            enc.y_train,
            dp=plan.dp,
            hp=plan.hp,
            fixed_events=events_from_json(plan.pre_events),
            seed=config.seed,
            accountant=config.accountant,
            max_physical_batch_size=config.max_physical_batch_size,
            progress=progress,
            resume=resume,
            checkpoint_every=config.checkpoint_every,
            on_checkpoint=(lambda state: on_checkpoint(plan, state)) if on_checkpoint else None,
        )
        privacy = dp_privacy(
            plan,
            optimizer,
            accountant=config.accountant,
            preprocessing_share=config.preprocessing_share,
        )
    return finish(config, data, keys.signer, plan, model, enc, privacy, screening)
