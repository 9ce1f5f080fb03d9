"""Client-level DP at the server: uniform weights, a fixed denominator K, noise zC on the sum
of the clipped updates, and a card whose ε recomputes with dp_accounting for that mechanism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from securetrain.errors import ConfigError
from securetrain.federated.card import client_level_dp
from securetrain.federated.config import FederatedConfig
from securetrain.federated.strategies import server_strategy

SITES, NOISE, CLIP, DIM, REPEATS = 3, 0.3, 1.0, 20_000, 5


class _Sites:
    """A client manager with every configured site available (no network)."""

    def num_available(self) -> int:
        return SITES

    def sample(self, num_clients: int, min_num_clients: int | None = None) -> list[str]:
        return [f"site-{i}" for i in range(num_clients)]


def _config() -> FederatedConfig:
    return FederatedConfig(
        data="builtin:breast-cancer",
        sites=SITES,
        rounds=4,
        epsilon=1.0,
        client_dp="fixed",
        client_noise=NOISE,
        client_clip=CLIP,
    )


def _updates() -> list[np.ndarray]:
    """Three updates: two inside the clipping ball, one far outside (norm 2.8 > C = 1)."""
    ones = np.ones(DIM)
    return [0.005 * ones, -0.006 * ones, 0.02 * ones]


def _residuals(counts: list[int], replying: int) -> np.ndarray:
    """The released aggregate less the uniform mean (over K, the configured sites) of the
    clipped updates of the sites that replied, from REPEATS independent aggregations."""
    config = _config()
    strategy = server_strategy(config, None)
    rng = np.random.default_rng(0)
    out = []
    for server_round in range(1, REPEATS + 1):
        start = [rng.normal(size=DIM).astype(np.float32)]
        strategy.configure_fit(server_round, ndarrays_to_parameters(start), _Sites())
        results = [
            (
                f"site-{i}",
                FitRes(
                    Status(Code.OK, ""),
                    ndarrays_to_parameters([(start[0] + u).astype(np.float32)]),
                    counts[i],
                    {},
                ),
            )
            for i, u in enumerate(_updates()[:replying])
        ]
        params, _ = strategy.aggregate_fit(server_round, results, [])
        assert params is not None
        (released,) = parameters_to_ndarrays(params)
        sent = [r.parameters for _, r in results]
        clipped = []
        for p in sent:
            u = parameters_to_ndarrays(p)[0].astype(np.float64) - start[0]
            clipped.append(u * min(1.0, CLIP / np.linalg.norm(u)))
        out.append(released.astype(np.float64) - start[0] - np.sum(clipped, axis=0) / SITES)
    return np.concatenate(out)


@pytest.mark.parametrize(
    ("counts", "replying"),
    [([100, 100, 100], 3), ([5, 5000, 50], 3), ([5, 5000, 50], 2)],
)
def test_server_noise_is_zc_over_k_around_the_uniform_mean(counts, replying) -> None:
    """Whatever counts the sites report and however many reply, the aggregate is the clipped
    updates' sum over K plus N(0, (zC/K)^2) in every coordinate. Weighting by the reported
    counts (FedAvg) or dividing by the sites that replied moves the mean by 10+ standard
    errors."""
    r = _residuals(counts, replying)
    std = NOISE * CLIP / SITES
    assert abs(r.mean()) < 5 * std / math.sqrt(r.size)
    assert r.std() == pytest.approx(std, rel=0.02)


def test_card_client_epsilon_recomputes_from_its_events_and_sensitivity() -> None:
    config = _config()
    section = client_level_dp(config)
    assert section is not None
    assert section["neighbouring"] == "add/remove one site"
    assert section["sensitivity"] == CLIP
    # The recorded noise multiplier is the server's measured noise, times K, over the stated
    # sensitivity: the events describe the mechanism that ran.
    measured = _residuals([1, 1, 1], SITES).std() * SITES / section["sensitivity"]
    (event,) = section["events"]
    assert event["mechanism"] == "gaussian" and event["count"] == config.rounds
    assert measured == pytest.approx(event["noise_multiplier"], rel=0.02)
    accountant = pld_privacy_accountant.PLDAccountant()
    accountant.compose(
        dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(event["noise_multiplier"]), 4)
    )
    assert section["epsilon"] == pytest.approx(accountant.get_epsilon(section["delta"]), rel=1e-9)


def test_adaptive_client_clipping_is_refused() -> None:
    settings = {**_config().model_dump(), "client_dp": "adaptive"}
    with pytest.raises(ConfigError, match="Adaptive client clipping is not offered"):
        FederatedConfig.model_validate(settings)
