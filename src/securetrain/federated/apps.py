"""The Flower apps of a simulation: a ClientApp whose training step is the site's DP-SGD, and a
ServerApp that aggregates with the strategy of :mod:`securetrain.federated.strategies`; and what
the deployed apps share with them (a site's round count, the model's weights as arrays)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import ConfigRecord, Context, NDArrays, Scalar
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from securetrain.bundle.card import Architecture
from securetrain.errors import ConfigError
from securetrain.federated.config import FederatedConfig
from securetrain.federated.sites import Site, local_round
from securetrain.federated.strategies import SITE_WEIGHT, fit_workflow, server_strategy
from securetrain.train import build_model

ROUNDS_STATE = "securetrain.rounds"

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
    reserved, done = str(state["settings"]), _count(state, "done")
    if reserved != settings:
        refusal = (
            f"The server changed the run's settings after this site reserved its budget: "
            f"reserved {reserved}, now {settings}."
        )
    elif done >= _count(state, "rounds"):
        refusal = (
            f"The server asked for round {done + 1}, but this site charged its "
            f"budget for {_count(state, 'rounds')} rounds."
        )
    if refusal is not None:
        log.error("refused: %s", refusal)
        raise ConfigError(refusal)
    state["done"] = done + 1
    return done + 1


def _count(state: ConfigRecord, key: str) -> int:
    value = state[key]
    if not isinstance(value, int):
        raise ConfigError(f"The site's round state holds a non-integer {key}. Found {value!r}.")
    return value


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

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
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
            update_bound=self.config.client_clip,
            seed=seed,
        )
        return weights, SITE_WEIGHT, {}


def client_app(
    sites: list[Site], arch: Architecture, config: FederatedConfig, lr: float, clip: float
) -> ClientApp:
    def client_fn(context: Context) -> Client:
        site = sites[int(context.node_config["partition-id"])]
        return SiteClient(site, arch, config, lr, clip, context).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if config.secagg else [])


def server_app(
    config: FederatedConfig, initial: list[np.ndarray], on_done: Callable[[list[np.ndarray]], None]
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(
            context=context,
            config=ServerConfig(num_rounds=config.rounds),
            strategy=server_strategy(config, initial),
        )
        DefaultWorkflow(fit_workflow=fit_workflow(config))(grid, legacy)
        record = legacy.state.array_records[MAIN_PARAMS_RECORD]
        on_done([a.numpy() for a in record.values()])

    return app
