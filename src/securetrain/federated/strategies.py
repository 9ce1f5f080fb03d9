"""How the server aggregates a round: FedAvg, median, Krum or trimmed mean over bounded updates
(:class:`BoundedUpdates`), server-side client-level DP (:class:`ClientLevelDP`), and the SecAgg+
fit workflow.

Every mode bounds what one site can do to the global model: a site's reported example count is
never a weight (uniform weights), and its update (its weights less the round's global weights)
is at most ``client_clip`` in L2 norm, clipped by the server where it sees each update, and by
the site before masking under SecAgg+, where the server checks the unmasked sum instead."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    Strategy,
)
from flwr.server.workflow import SecAggPlusWorkflow

from securetrain.engine.noise import gaussian_noise, make_generator
from securetrain.federated.config import FederatedConfig
from securetrain.federated.sites import clip_update

TRIM_FRACTION = 0.2
CLIENT_NOISE_SEED = 7_919
SITE_WEIGHT = 1  # what every site reports as its example count: weights are uniform
# SecAgg+ quantisation (Flower's defaults): each value of each site's weights is clipped to
# [-QUANTISATION_RANGE, QUANTISATION_RANGE] and mapped to QUANTISATION_LEVELS integers.
QUANTISATION_RANGE = 8.0
QUANTISATION_LEVELS = 2**22

log = logging.getLogger(__name__)


def server_strategy(
    config: FederatedConfig,
    initial: list[np.ndarray] | None,
    on_fit_metrics: Callable[[list[tuple[int, dict]]], dict[str, Any]] | None = None,
) -> Strategy:
    """The aggregation rule (``config.aggregation``) behind :class:`BoundedUpdates`, or
    :class:`ClientLevelDP`, which bounds the updates itself. Every site takes part in every
    round, and a round in which any site fails fails the run (no silent aggregation over fewer
    sites). Without ``initial`` weights, Flower asks one site for its freshly initialised
    model."""
    common: dict[str, Any] = dict(
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
    inner: Strategy
    if config.aggregation == "krum":
        inner = Krum(num_malicious_clients=config.malicious, **common)
    elif config.aggregation == "median":
        inner = FedMedian(**common)
    elif config.aggregation == "trimmed-mean":
        inner = FedTrimmedAvg(beta=TRIM_FRACTION, **common)
    else:
        inner = FedAvg(**common)
    return BoundedUpdates(inner, bound=config.client_clip, sites=config.sites, secagg=config.secagg)


def _norm(arrays: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def quantisation_slack(values: int) -> float:
    """The most SecAgg+ quantisation can add to the L2 norm of the unmasked mean: one
    quantisation step per value."""
    return math.sqrt(values) * 2 * QUANTISATION_RANGE / QUANTISATION_LEVELS


def _round_base(
    current: list[np.ndarray] | None,
    results: list[tuple[ClientProxy, FitRes]],
    failures: list[tuple[ClientProxy, FitRes] | BaseException],
) -> list[np.ndarray] | None:
    """The round's global weights in float64, or None for a round that aggregates nothing (a
    site failed, or none replied)."""
    if failures or not results:
        return None
    assert current is not None
    return [np.asarray(w, dtype=np.float64) for w in current]


def _update(res: FitRes, base: list[np.ndarray]) -> list[np.ndarray]:
    """A site's update: its weights less the round's global weights, in float64."""
    return [
        np.asarray(w, dtype=np.float64) - g
        for w, g in zip(parameters_to_ndarrays(res.parameters), base, strict=True)
    ]


def _parameters_like(arrays: list[np.ndarray], like: list[np.ndarray]) -> Parameters:
    """``arrays`` as Flower parameters, each in the dtype of its counterpart in ``like``."""
    return ndarrays_to_parameters([a.astype(w.dtype) for a, w in zip(arrays, like, strict=True)])


class BoundedUpdates(Strategy):
    """``inner`` over bounded updates with uniform weights. Without SecAgg+, each site's update
    is clipped to L2 norm ``bound`` and its reported example count replaced by 1 before ``inner``
    aggregates. Under SecAgg+ the server receives only the mean of the updates the sites
    bounded before masking: their sum (the mean times ``sites``) must be within ``sites *
    bound`` (plus the quantisation's slack), else the round is rejected and the global model
    stays where it was."""

    def __init__(self, inner: Strategy, *, bound: float, sites: int, secagg: bool) -> None:
        self.inner, self.bound, self.sites, self.secagg = inner, bound, sites, secagg
        self.current: list[np.ndarray] | None = None
        self.rejected: list[int] = []

    def __repr__(self) -> str:
        return f"BoundedUpdates({self.inner!r}, bound={self.bound}, secagg={self.secagg})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.current = parameters_to_ndarrays(parameters)
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        base = _round_base(self.current, results, failures)
        if base is None:
            return None, {}
        if self.secagg:
            sent = [self._checked_mean(server_round, results[0][1], base)] * len(results)
        else:
            sent = [
                self._parameters(base, clip_update(_update(res, base), self.bound))
                for _, res in results
            ]
        return self.inner.aggregate_fit(
            server_round,
            [
                (proxy, FitRes(res.status, parameters, SITE_WEIGHT, res.metrics))
                for (proxy, res), parameters in zip(results, sent, strict=True)
            ],
            failures,
        )

    def _checked_mean(self, server_round: int, res: FitRes, base: list[np.ndarray]) -> Parameters:
        """SecAgg+ gives every result the unmasked mean: keep it if the sum is within bounds."""
        total = self.sites * _norm(_update(res, base))
        limit = self.sites * (self.bound + quantisation_slack(sum(g.size for g in base)))
        if total <= limit:
            return res.parameters
        log.error(
            "round %d rejected: the sum of the sites' updates has L2 norm %.6g, above %d sites x "
            "bound %g; the global model is kept",
            server_round,
            total,
            self.sites,
            self.bound,
        )
        self.rejected.append(server_round)
        return self._parameters(base, [np.zeros_like(g) for g in base])

    def _parameters(self, base: list[np.ndarray], update: list[np.ndarray]) -> Parameters:
        assert self.current is not None
        return _parameters_like([g + u for g, u in zip(base, update, strict=True)], self.current)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return self.inner.evaluate(server_round, parameters)


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
        base = _round_base(self.current, results, failures)
        if base is None:
            return None, {}
        assert self.current is not None
        total = [np.zeros_like(w) for w in base]
        for _, res in results:
            for t, u in zip(total, clip_update(_update(res, base), self.clip), strict=True):
                t += u
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
        return _parameters_like(aggregated, self.current), metrics


def fit_workflow(config: FederatedConfig) -> SecAggPlusWorkflow | None:
    """SecAgg+ when asked (every site shares its masks with all others; any one may drop out),
    else Flower's default fit workflow. Every site's weight is ``SITE_WEIGHT``, the largest
    SecAgg+ expects, so the quantisation keeps its full precision."""
    if not config.secagg:
        return None
    return SecAggPlusWorkflow(
        num_shares=config.sites,
        reconstruction_threshold=max(2, config.sites - 1),
        max_weight=float(SITE_WEIGHT),
        clipping_range=QUANTISATION_RANGE,
        quantization_range=QUANTISATION_LEVELS,
    )
