"""``simulate``: a federated run on this machine with Flower's simulation engine, and a
(signed) bundle. A sealed dataset's own budget is charged before it is decrypted; a plaintext
table or built-in dataset charges each simulated site's budget."""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from securetrain.bundle import ModelCard, write_bundle
from securetrain.bundle.card import Architecture, DataSection, SplitSection
from securetrain.crypto.keystream import make_keystream
from securetrain.data import TabularData, split_mask
from securetrain.data.preprocess import Preprocessor, declared_preprocessor
from securetrain.errors import ConfigError, SecureTrainError
from securetrain.federated.card import federated_card
from securetrain.federated.config import FederatedConfig
from securetrain.federated.environment import flower_environment
from securetrain.federated.sites import Site, count_event, partition, plan_site, site_plan
from securetrain.outputs import check_new_dir
from securetrain.privacy import (
    DPSGDPlan,
    compute_epsilon,
    dominates,
    events_to_json,
)
from securetrain.sealed import VerifiedSealed, check_key
from securetrain.store import Store, ledger
from securetrain.train import (
    ResolvedKeys,
    SealedSource,
    TrainConfig,
    architecture_for,
    build_model,
    dp_metrics,
    load_data,
    open_verified,
    parse_source,
    predict_proba,
    resolve_keys,
    verify_source,
)

TEST_FRACTION = 0.3
METRICS_NOTE = (
    "the global model on the pooled held-out rows of all sites (a simulation), from one Gaussian "
    "release at the sites' count noise multiplier, which is one of privacy.events"
)


@dataclass
class FederatedResult:
    card: ModelCard
    model: nn.Module
    bundle: Path
    sites: list[Site]
    charged_to: str


@dataclass(frozen=True)
class DatasetCharge:
    """A sealed dataset's own reservation for a federated run on it: the DP-SGD every site
    runs, planned from the header."""

    run_id: str
    dataset_id: str
    name: str
    plan: DPSGDPlan
    deltas: tuple[float, ...]


def _reserve_dataset(
    config: FederatedConfig, source: SealedSource, keys: ResolvedKeys, store: Store
) -> tuple[VerifiedSealed, DatasetCharge]:
    """Verify the sealed dataset and the key and reserve the run on the dataset's own budget,
    from the header alone (nothing is decrypted). The sites hold disjoint rows, so one record
    meets one site's mechanism only (parallel composition): the charge is the events of one
    site (its count, the held-out metrics and its DP-SGD), planned for the expected site size,
    and every site is held to them."""
    if config.site_budget is not None:
        raise ConfigError(
            "--site-budget sets simulated sites' budgets; a sealed dataset is charged to its own "
            "budget (securetrain budget set D.sealed --epsilon E)."
        )
    verified = verify_source(source, keys)
    header, name = verified.header, source.path.name
    assert keys.provider is not None
    check_key(verified, keys.provider)  # a wrong key fails here, before any reservation
    plan = site_plan(
        config,
        max(1.0, header.rows * (1 - TEST_FRACTION) / config.sites),
        batch_size=config.batch_size,
        held_out_metrics=True,
    )
    run_id = ledger.reserve(
        store,
        dataset_id=header.dataset_id,
        manifest_digest=verified.manifest_digest,
        name=name,
        events=plan.events,
        epsilon=config.epsilon,
        delta_partition_selection=0.0,
        parameters={
            "federated": True,
            "partition": config.partition,
            **json.loads(config.site_settings()),
        },
    )
    budget_delta = ledger.status(store, header.dataset_id).delta
    return verified, DatasetCharge(
        run_id, header.dataset_id, name, plan, (config.delta, budget_delta)
    )


def _held_to(site: Site, charge: DatasetCharge) -> Site:
    """The site runs the reserved DP-SGD (sample rate, noise multiplier, steps) whatever its
    own size; its noisy count sets only its expected batch. Refused if its events would not be
    dominated by the reservation."""
    plan = charge.plan
    events = [*site.events[:-1], plan.sgd_event]
    if not dominates(plan.events, events, deltas=charge.deltas):
        raise SecureTrainError(
            f"Site {site.index}'s privacy loss would exceed what {charge.name} reserved."
        )
    return replace(
        site,
        sample_rate=plan.sample_rate,
        steps_per_round=plan.steps_per_round,
        noise_multiplier=plan.noise_multiplier,
        events=events,
        epsilon=compute_epsilon(events, delta=site.delta),
    )


def _sites(
    config: FederatedConfig,
    pre: Preprocessor,
    data: TabularData,
    rng: np.random.Generator,
    charge: DatasetCharge | None,
) -> tuple[list[Site], str]:
    x = pre.transform(data.features)
    y, known = pre.encode_labels(data.labels)
    x, y = x[known], y[known]
    split_seed = secrets.token_hex(16) if config.seed is None else f"seed-{config.seed}"
    test = split_mask(data, seed=split_seed, test_fraction=TEST_FRACTION)[known]
    counts = make_keystream(config.seed, stream="site-counts")
    sites = []
    for i, rows in enumerate(partition(y, config.sites, config.dirichlet_alpha, rng)):
        train_rows, test_rows = rows[~test[rows]], rows[test[rows]]
        site = plan_site(
            i,
            x[train_rows],
            y[train_rows],
            x[test_rows],
            y[test_rows],
            config,
            batch_size=config.batch_size,
            rng=counts,
            held_out_metrics=True,
        )
        sites.append(site if charge is None else _held_to(site, charge))
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
    """Train across simulated sites. On a sealed dataset: verify, reserve on its budget, and
    only then decrypt (in memory); a run that fails after decryption keeps its charge."""
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
    with Store(config.store) as store:
        return _simulate_on(config, train_config, keys, store)


def _simulate_on(
    config: FederatedConfig, train_config: TrainConfig, keys: ResolvedKeys, store: Store
) -> FederatedResult:
    """The run on ``store``: charged to the sealed dataset's budget when the data is sealed."""
    source = parse_source(config.data)
    if not isinstance(source, SealedSource):
        return _simulate(config, load_data(train_config), keys, store, None)
    verified, charge = _reserve_dataset(config, source, keys, store)
    decrypted = False

    def on_decrypt() -> None:
        nonlocal decrypted
        decrypted = True
        ledger.transition(store, charge.run_id, "running")

    try:
        data = open_verified(train_config, keys, verified, on_decrypt=on_decrypt)
        result = _simulate(config, data, keys, store, charge)
    except BaseException as exc:
        ledger.transition(
            store,
            charge.run_id,
            "failed" if decrypted else "released",
            details={"error": type(exc).__name__},
        )
        raise
    ledger.transition(
        store,
        charge.run_id,
        "completed",
        events=charge.plan.events,
        epsilon=charge.plan.epsilon(),
        delta_partition_selection=0.0,
        details={"bundle": str(result.bundle), "epsilon": charge.plan.epsilon()},
    )
    return result


def _simulate(
    config: FederatedConfig,
    data: TabularData,
    keys: ResolvedKeys,
    store: Store,
    charge: DatasetCharge | None,
) -> FederatedResult:
    from securetrain.federated.apps import set_weights

    assert config.out is not None  # simulate() checked it
    pre = declared_preprocessor(data)
    rng = np.random.default_rng(secrets.randbits(128) if config.seed is None else config.seed)
    sites, split_seed = _sites(config, pre, data, rng, charge)
    arch = architecture_for(
        config.model, n_features=pre.n_features, n_classes=len(pre.label.classes), image_shape=None
    )
    lr, clip = config.site_lr, config.site_clip
    site_runs = (
        list(zip(sites, _reserve(store, data, sites, config), strict=True))
        if charge is None
        else []
    )
    charged_to = _charged_to(charge)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    model = build_model(arch)
    try:
        final = _run_flower(config, sites, arch, model, lr, clip)
    except BaseException:
        for _, run_id in site_runs:
            ledger.transition(store, run_id, "failed")
        raise
    set_weights(model, final)
    model.eval()
    metrics = _held_out_metrics(config, model, sites, n_classes=len(pre.label.classes))
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
            split=SplitSection(
                method="hmac-sha256 per record", test_fraction=TEST_FRACTION, seed=split_seed
            ),
        ),
        metrics={**metrics, "note": METRICS_NOTE},
        site_reports=[{**s.summary(), "events": events_to_json(s.events)} for s in sites],
        signer=keys.signer,
        mode="simulation",
        charged_to=charged_to,
    )
    bundle = write_bundle(config.out, model.state_dict(), card, signer=keys.signer)
    for site, run_id in site_runs:
        ledger.transition(
            store,
            run_id,
            "completed",
            events=site.events,
            epsilon=site.epsilon,
            delta_partition_selection=0.0,
            details={"bundle": str(bundle), "epsilon": site.epsilon},
        )
    return FederatedResult(card, model, bundle, sites, charged_to)


def _charged_to(charge: DatasetCharge | None) -> str:
    """Whose budget a simulation is charged to, in the card's words."""
    if charge is None:
        return "each simulated site's own budget"
    return (
        f"the sealed dataset's own budget ({charge.dataset_id}): the sites hold disjoint "
        "rows, so the charge is one site's events (parallel composition)"
    )


def _run_flower(
    config: FederatedConfig,
    sites: list[Site],
    arch: Architecture,
    model: nn.Module,
    lr: float,
    clip: float,
) -> list[np.ndarray]:
    """The global model's weights after Flower's simulation engine ran every round."""
    from flwr.simulation import run_simulation

    from securetrain.federated.apps import client_app, get_weights, server_app

    final: list[list[np.ndarray]] = []
    logging.getLogger("flwr").setLevel(logging.ERROR)
    with flower_environment():
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
    return final[0]


def _held_out_metrics(
    config: FederatedConfig, model: nn.Module, sites: list[Site], *, n_classes: int
) -> dict[str, float | int | list[float] | None]:
    """DP metrics of the global model on the sites' pooled held-out rows; their count is
    estimated from the sites' noisy training counts: no new release."""
    x_test = np.concatenate([s.x_test for s in sites])
    y_test = np.concatenate([s.y_test for s in sites])
    return dp_metrics(
        predict_proba(model, x_test),
        y_test,
        n_classes,
        sigma=count_event(config, held_out_metrics=True).noise_multiplier,
        n_noisy=sum(s.n_noisy for s in sites) * TEST_FRACTION / (1 - TEST_FRACTION),
        rng=make_keystream(config.seed, stream="metrics"),
    )
