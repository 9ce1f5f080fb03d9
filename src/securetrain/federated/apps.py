"""The Flower apps: a ClientApp whose training step is the site's DP-SGD, and a ServerApp with
FedAvg, SecAgg+, client-level DP (server-side clipping, uniform weights) or robust aggregation."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    ConfigRecord,
    Context,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    Strategy,
)
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from securetrain.bundle.card import Architecture
from securetrain.engine.noise import gaussian_noise, make_generator
from securetrain.errors import ConfigError
from securetrain.federated.config import FederatedConfig
from securetrain.federated.sites import Site, local_round
from securetrain.train.models import build_model

TRIM_FRACTION = 0.2
ROUNDS_STATE = "securetrain.rounds"
CLIENT_NOISE_SEED = 7_919

log = logging.getLogger(__name__)


def admit_round(context: Context, settings: str, rounds: int) -> int:
    """Count a training request in the site's own state and return its round number (from 1).

    The first request fixes the settings the site plans and charges for; a later request with
    other settings, or one beyond the ``rounds`` it charged, is refused (the round fails). The
    round is counted before it trains, so a round that crashes still counts."""
    state = context.state.config_records.get(ROUNDS_STATE)
    if state is None:
        state = ConfigRecord({"settings": settings, "rounds": rounds, "done": 0})
        context.state.config_records[ROUNDS_STATE] = state
    refusal = None
    if str(state["settings"]) != settings:
        refusal = (
            f"The server changed the run's settings after this site reserved its budget: "
            f"reserved {state['settings']}, now {settings}."
        )
    elif int(state["done"]) >= int(state["rounds"]):
        refusal = (
            f"The server asked for round {int(state['done']) + 1}, but this site charged its "
            f"budget for {int(state['rounds'])} rounds."
        )
    if refusal is not None:
        log.error("refused: %s", refusal)
        raise ConfigError(refusal)
    state["done"] = int(state["done"]) + 1
    return int(state["done"])


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
        self,
        site: Site,
        arch: Architecture,
        config: FederatedConfig,
        lr: float,
        clip: float,
        context: Context,
    ):
        self.site, self.arch, self.config, self.lr, self.clip = site, arch, config, lr, clip
        self.context = context

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        round_number = admit_round(self.context, self.config.site_settings(), self.config.rounds)
        model = build_model(self.arch)
        set_weights(model, parameters)
        seed = None
        if self.config.seed is not None:
            seed = self.config.seed * 1_000_003 + round_number * 1_009 + self.site.index
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
        return SiteClient(site, arch, config, lr, clip, context).to_client()

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
    if config.client_dp == "fixed":
        seed = None if config.seed is None else config.seed * CLIENT_NOISE_SEED
        return ClientLevelDP(
            noise_multiplier=config.client_noise,
            clip=config.client_clip,
            sites=config.sites,
            seed=seed,
            **common,
        )
    if config.aggregator == "krum":
        return Krum(num_malicious_clients=config.malicious, **common)
    if config.aggregator == "median":
        return FedMedian(**common)
    if config.aggregator == "trimmed-mean":
        return FedTrimmedAvg(beta=TRIM_FRACTION, **common)
    return FedAvg(**common)


class ClientLevelDP(FedAvg):
    """Client-level DP at the server: each site's update (its weights less the round's global
    weights) is clipped to L2 norm ``clip``; the clipped updates are summed with uniform weights
    (whatever counts the sites report); N(0, (noise_multiplier * clip)^2) is added to every
    coordinate of the sum, drawn from the engine's generator; and the sum is divided by
    ``sites``, the number of sites configured for the round, not the number that replied.

    Adding or removing one site changes the sum by at most ``clip`` in L2 norm, so each round is
    one Gaussian mechanism with noise multiplier ``noise_multiplier`` under add/remove-one-site
    neighbouring; dividing by the fixed ``sites`` is post-processing."""

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clip: float,
        sites: int,
        seed: int | None,
        **fedavg: Any,
    ) -> None:
        super().__init__(**fedavg)
        self.noise_multiplier, self.clip, self.sites = noise_multiplier, clip, sites
        self.generator, _ = make_generator(seed)
        self.current: list[np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"ClientLevelDP(noise_multiplier={self.noise_multiplier}, clip={self.clip})"

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.current = parameters_to_ndarrays(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if failures or not results:
            return None, {}
        assert self.current is not None
        base = [np.asarray(w, dtype=np.float64) for w in self.current]
        total = [np.zeros_like(w) for w in base]
        for _, res in results:
            update = [
                np.asarray(w, dtype=np.float64) - g
                for w, g in zip(parameters_to_ndarrays(res.parameters), base, strict=True)
            ]
            norm = math.sqrt(sum(float(np.sum(u * u)) for u in update))
            scale = min(1.0, self.clip / norm) if norm > 0 else 1.0
            for t, u in zip(total, update, strict=True):
                t += scale * u
        std = self.noise_multiplier * self.clip
        aggregated = [
            g + (t + gaussian_noise(torch.from_numpy(t), std, self.generator).numpy()) / self.sites
            for g, t in zip(base, total, strict=True)
        ]
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn is not None:
            metrics = self.fit_metrics_aggregation_fn(
                [(res.num_examples, res.metrics) for _, res in results]
            )
        return ndarrays_to_parameters(
            [a.astype(w.dtype) for a, w in zip(aggregated, self.current, strict=True)]
        ), metrics


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
