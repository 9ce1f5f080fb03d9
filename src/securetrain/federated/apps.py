"""The Flower apps: a ClientApp whose training step is the site's DP-SGD, and a ServerApp with
FedAvg, SecAgg+, client-level DP (server-side clipping) or robust aggregation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    Strategy,
)
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from securetrain.bundle.card import Architecture
from securetrain.federated.config import FederatedConfig
from securetrain.federated.sites import Site, local_round
from securetrain.train.models import build_model

TRIM_FRACTION = 0.2


def set_weights(model: torch.nn.Module, weights: list[np.ndarray]) -> None:
    keys = list(model.state_dict())
    model.load_state_dict(
        {k: torch.from_numpy(np.asarray(w)) for k, w in zip(keys, weights, strict=True)}
    )


def get_weights(model: torch.nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().astype(np.float32) for v in model.state_dict().values()]


class SiteClient(NumPyClient):
    """A site: trains the global model on its own data with DP-SGD for one round."""

    def __init__(
        self, site: Site, arch: Architecture, config: FederatedConfig, lr: float, clip: float
    ):
        self.site, self.arch, self.config, self.lr, self.clip = site, arch, config, lr, clip

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        model = build_model(self.arch)
        set_weights(model, parameters)
        seed = None
        if self.config.seed is not None:
            seed = self.config.seed * 1_000_003 + int(config["round"]) * 1_009 + self.site.index
        weights = local_round(
            self.site,
            model,
            classes=self.arch.n_classes,
            attack=self.config.attack,
            lr=self.lr,
            max_grad_norm=self.clip,
            seed=seed,
        )
        # FedAvg weights sites by their noisy row counts: the exact count is never sent.
        return weights, int(round(self.site.n_noisy)), {}


def client_app(
    sites: list[Site], arch: Architecture, config: FederatedConfig, lr: float, clip: float
) -> ClientApp:
    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        site = sites[int(context.node_config["partition-id"])]
        return SiteClient(site, arch, config, lr, clip).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if config.secagg else [])


def strategy_for(
    config: FederatedConfig,
    initial: list[np.ndarray] | None,
    on_fit_metrics: Callable[[list[tuple[int, dict]]], dict[str, Any]] | None = None,
) -> Strategy:
    """The aggregation rule. Every site takes part in every round, and a round in which any
    site fails fails the run (no silent aggregation over fewer sites). Without ``initial``
    weights, Flower asks one site for its freshly initialised model."""
    common = dict(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=config.sites,
        min_available_clients=config.sites,
        accept_failures=False,
        initial_parameters=None if initial is None else ndarrays_to_parameters(initial),
        on_fit_config_fn=lambda server_round: {"round": server_round},
        fit_metrics_aggregation_fn=on_fit_metrics,
    )
    strategy: Strategy
    if config.aggregator == "krum":
        strategy = Krum(num_malicious_clients=config.malicious, **common)
    elif config.aggregator == "median":
        strategy = FedMedian(**common)
    elif config.aggregator == "trimmed-mean":
        strategy = FedTrimmedAvg(beta=TRIM_FRACTION, **common)
    else:
        strategy = FedAvg(**common)
    if config.client_dp == "fixed":
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=config.client_noise,
            clipping_norm=config.client_clip,
            num_sampled_clients=config.sites,
        )
    elif config.client_dp == "adaptive":
        strategy = DifferentialPrivacyServerSideAdaptiveClipping(
            strategy,
            noise_multiplier=config.client_noise,
            num_sampled_clients=config.sites,
            initial_clipping_norm=config.client_clip,
        )
    return strategy


def fit_workflow(config: FederatedConfig) -> SecAggPlusWorkflow | None:
    """SecAgg+ when asked (every site shares its masks with all others; any one may drop out),
    else Flower's default fit workflow."""
    if not config.secagg:
        return None
    return SecAggPlusWorkflow(
        num_shares=config.sites, reconstruction_threshold=max(2, config.sites - 1)
    )


def server_app(
    config: FederatedConfig, initial: list[np.ndarray], on_done: Callable[[list[np.ndarray]], None]
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid, context):  # type: ignore[no-untyped-def]
        legacy = LegacyContext(
            context=context,
            config=ServerConfig(num_rounds=config.rounds),
            strategy=strategy_for(config, initial),
        )
        DefaultWorkflow(fit_workflow=fit_workflow(config))(grid, legacy)
        record = legacy.state.array_records[MAIN_PARAMS_RECORD]
        on_done([a.numpy() for a in record.values()])

    return app
