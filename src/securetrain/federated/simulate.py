"""``simulate``: a federated run on this machine with Flower's simulation engine; each site's
privacy loss is charged to its budget, and the result is a (signed) bundle."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from securetrain.bundle import ModelCard, write_bundle
from securetrain.bundle.card import DataSection
from securetrain.data import TabularData, split_mask
from securetrain.data.preprocess import Preprocessor, declared_preprocessor
from securetrain.errors import SecureTrainError
from securetrain.federated.card import federated_card
from securetrain.federated.config import FederatedConfig
from securetrain.federated.sites import Site, partition, plan_site
from securetrain.outputs import check_new_dir
from securetrain.privacy import events_to_json
from securetrain.store import Store, ledger
from securetrain.train import TrainConfig, evaluate
from securetrain.train.models import architecture_for, build_model
from securetrain.train.run import load_data
from securetrain.train.trainer import resolve_keys

TEST_FRACTION = 0.3


@dataclass
class FederatedResult:
    card: ModelCard
    model: nn.Module
    bundle: Path
    sites: list[Site]


def _sites(
    config: FederatedConfig, pre: Preprocessor, data: TabularData, rng: np.random.Generator
) -> tuple[list[Site], str]:
    x = pre.transform(data.features)
    y, known = pre.encode_labels(data.labels)
    x, y = x[known], y[known]
    split_seed = secrets.token_hex(16) if config.seed is None else f"seed-{config.seed}"
    test = split_mask(data, seed=split_seed, test_fraction=TEST_FRACTION)[known]
    sites = []
    for i, rows in enumerate(partition(y, config.sites, config.dirichlet_alpha, rng)):
        train_rows, test_rows = rows[~test[rows]], rows[test[rows]]
        sites.append(
            plan_site(
                i,
                x[train_rows],
                y[train_rows],
                x[test_rows],
                y[test_rows],
                config,
                batch_size=config.batch_size,
                rng=rng,
            )
        )
    return sites, split_seed


def _reserve(
    store: Store, data: TabularData, sites: list[Site], config: FederatedConfig
) -> list[str]:
    """Reserve each site's privacy loss in its own budget; all sites or none."""
    runs: list[str] = []
    try:
        for s in sites:
            site = {
                "dataset_id": f"{data.sha256[:32]}-site-{s.index}-of-{config.sites}",
                "manifest_digest": data.sha256,
                "name": f"{data.source} (federated site {s.index + 1} of {config.sites})",
            }
            if config.site_budget is not None:
                ledger.set_budget(store, **site, epsilon=config.site_budget, delta=config.delta)
            runs.append(
                ledger.reserve(
                    store,
                    **site,
                    events=s.events,
                    epsilon=s.epsilon,
                    delta_partition_selection=0.0,
                    parameters={"federated": True, "rounds": config.rounds, "site": s.index},
                )
            )
    except BaseException:
        for run_id in runs:
            ledger.transition(store, run_id, "released")
        raise
    return runs


def simulate(config: FederatedConfig) -> FederatedResult:
    from flwr.simulation import run_simulation

    from securetrain.federated.apps import client_app, get_weights, server_app, set_weights

    config.validate_choices()
    assert config.out is not None
    check_new_dir(config.out)
    train_config = TrainConfig(
        data=config.data,
        label=config.label,
        schema_path=config.schema_path,
        key_dir=config.key_dir,
        passphrase_env=config.passphrase_env,
    )
    keys = resolve_keys(train_config)
    data = load_data(train_config)
    pre = declared_preprocessor(data)
    rng = np.random.default_rng(secrets.randbits(128) if config.seed is None else config.seed)
    sites, split_seed = _sites(config, pre, data, rng)
    arch = architecture_for(
        config.model, n_features=pre.n_features, n_classes=len(pre.label.classes), image_shape=None
    )
    lr, clip = config.site_lr, config.site_clip
    store = Store(config.store)
    runs = _reserve(store, data, sites, config)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    model = build_model(arch)
    final: list[list[np.ndarray]] = []
    try:
        logging.getLogger("flwr").setLevel(logging.ERROR)
        run_simulation(
            server_app(config, get_weights(model), final.append),
            client_app(sites, arch, config, lr, clip),
            num_supernodes=config.sites,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"logging_level": "error", "log_to_driver": False},
            },
        )
        if not final:
            raise SecureTrainError("The federated run ended without a global model.")
    except BaseException:
        for run_id in runs:
            ledger.transition(store, run_id, "failed")
        raise
    set_weights(model, final[0])
    model.eval()
    x_test = np.concatenate([s.x_test for s in sites])
    y_test = np.concatenate([s.y_test for s in sites])
    metrics = evaluate(model, x_test, y_test, len(pre.label.classes))
    metrics["note"] = (
        "the global model on the pooled held-out rows of all sites (a simulation); not covered "
        "by the DP guarantee"
    )
    card = federated_card(
        config=config,
        pre=pre,
        arch=arch,
        lr=lr,
        clip=clip,
        data=DataSection(
            source=data.source,
            label=data.label_name,
            n_train=int(round(sum(s.n_noisy for s in sites))),
            n_test=0,
            counts="sum of the sites' Gaussian-noised counts; held-out counts not released",
            identity=data.commit(config.out),
            sealed=data.sealed,
            split={
                "method": "hmac-sha256 per record",
                "test_fraction": TEST_FRACTION,
                "seed": split_seed,
            },
        ),
        metrics=metrics,
        site_reports=[{**s.summary(), "events": events_to_json(s.events)} for s in sites],
        signer=keys.signer,
        mode="simulation",
    )
    bundle = write_bundle(config.out, model.state_dict(), card, signer=keys.signer)
    for site, run_id in zip(sites, runs, strict=True):
        ledger.transition(
            store,
            run_id,
            "completed",
            events=site.events,
            epsilon=site.epsilon,
            delta_partition_selection=0.0,
            details={"bundle": str(bundle), "epsilon": site.epsilon},
        )
    return FederatedResult(card, model, bundle, sites)
