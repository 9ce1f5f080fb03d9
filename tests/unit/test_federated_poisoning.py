"""One site cannot drag the global model: the server ignores reported example counts and clips
each update to the configured bound, the default aggregator is the coordinate-wise median, under
SecAgg+ the site bounds its update and the server rejects a sum beyond K times the bound, and
the server's client-level DP noise comes from the keystream, never from a global generator."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from securetrain.data import load_builtin
from securetrain.data.preprocess import declared_preprocessor
from securetrain.engine.noise import KeystreamGenerator
from securetrain.errors import ConfigError
from securetrain.federated.card import update_bound
from securetrain.federated.config import FederatedConfig
from securetrain.federated.sites import Site, local_round, plan_site
from securetrain.federated.strategies import BoundedUpdates, fit_workflow, server_strategy
from securetrain.train.models import architecture_for, build_model

SITES, BOUND, DIM = 3, 0.5, 40
SITE_BOUND = 0.02  # below the site's raw update norm
DATA = "builtin:breast-cancer"


class _Sites:
    """A client manager with every configured site available (no network)."""

    def num_available(self) -> int:
        return SITES

    def sample(self, num_clients: int, min_num_clients: int | None = None) -> list[str]:
        return [f"site-{i}" for i in range(num_clients)]


def _config(**changes) -> FederatedConfig:
    return FederatedConfig(
        data=DATA, sites=SITES, rounds=2, local_epochs=1, epsilon=1.0, client_clip=BOUND, **changes
    )


def _round(
    strategy, start: np.ndarray, sent: list[np.ndarray], counts: list[int], server_round: int = 1
) -> np.ndarray:
    """The global weights after one round in which site i sends ``sent[i]`` and reports
    ``counts[i]`` examples."""
    strategy.configure_fit(server_round, ndarrays_to_parameters([start]), _Sites())
    results = [
        (f"site-{i}", FitRes(Status(Code.OK, ""), ndarrays_to_parameters([w]), n, {}))
        for i, (w, n) in enumerate(zip(sent, counts, strict=True))
    ]
    params, _ = strategy.aggregate_fit(server_round, results, [])
    assert params is not None
    return parameters_to_ndarrays(params)[0].astype(np.float64)


def _honest(rng: np.random.Generator, start: np.ndarray) -> list[np.ndarray]:
    """Two honest sites' weights: updates of norm well inside the bound."""
    return [(start + rng.normal(0, 0.02, DIM)).astype(np.float32) for _ in range(SITES - 1)]


@pytest.mark.parametrize("aggregator", ["fedavg", "median", "trimmed-mean", "krum"])
def test_a_scaled_update_with_a_huge_count_moves_the_model_at_most_the_bound(aggregator) -> None:
    rng = np.random.default_rng(1)
    strategy = server_strategy(_config(aggregator=aggregator), None)
    for server_round in range(1, 21):
        start = rng.normal(size=DIM).astype(np.float32)
        honest = _honest(rng, start)
        attack = (start + 1000 * rng.normal(0, 0.02, DIM)).astype(np.float32)
        new = _round(strategy, start, [*honest, attack], [10, 10, 10**9], server_round)
        assert np.linalg.norm(new - start) <= BOUND * (1 + 1e-6)


def test_fedavg_is_the_uniform_mean_of_the_clipped_updates() -> None:
    """Known answer: whatever counts the sites report, the mean over the sites of each update
    clipped to the bound (FedAvg weighted by the counts would give about the attacker's)."""
    rng = np.random.default_rng(2)
    start = rng.normal(size=DIM).astype(np.float32)
    sent = [*_honest(rng, start), (start + 1000 * rng.normal(0, 0.02, DIM)).astype(np.float32)]
    new = _round(server_strategy(_config(aggregator="fedavg"), None), start, sent, [1, 1, 10**9])
    updates = [w.astype(np.float64) - start for w in sent]
    clipped = [u * min(1.0, BOUND / np.linalg.norm(u)) for u in updates]
    np.testing.assert_allclose(new - start, np.mean(clipped, axis=0), atol=1e-6)


def test_the_default_aggregator_is_the_median_and_one_attacker_cannot_control_it() -> None:
    """Over many attacks in random directions, each coordinate of the result stays between the
    two honest sites' values: the attacker chooses nothing outside the honest range."""
    config = _config()
    assert config.aggregator == "auto" and config.aggregation == "median"
    assert update_bound(config) == {
        "norm": BOUND,
        "enforced": "the server clips each site's update before aggregating",
        "weights": "uniform",
    }
    strategy = server_strategy(config, None)
    rng = np.random.default_rng(3)
    for server_round in range(1, 101):
        start = rng.normal(size=DIM).astype(np.float32)
        honest = _honest(rng, start)
        direction = rng.normal(size=DIM)
        attack = (start + 1e3 * direction / np.linalg.norm(direction)).astype(np.float32)
        position = int(rng.integers(SITES))
        sent = [*honest[:position], attack, *honest[position:]]
        new = _round(strategy, start, sent, [1, 1, 1], server_round)
        low = np.minimum(*honest).astype(np.float64) - 1e-6
        high = np.maximum(*honest).astype(np.float64) + 1e-6
        assert np.all((low <= new) & (new <= high))


def test_secagg_and_client_dp_default_to_uniform_fedavg() -> None:
    assert _config(secagg=True).aggregation == "fedavg"
    assert _config(client_dp="fixed", client_noise=1.0).aggregation == "fedavg"
    with pytest.raises(ConfigError, match="cannot be combined"):
        _config(secagg=True, aggregator="median")
    workflow = fit_workflow(_config(secagg=True))
    assert workflow is not None and workflow.max_weight == 1.0


def _secagg_round(strategy, start: np.ndarray, mean: np.ndarray, server_round: int) -> np.ndarray:
    """What SecAgg+ hands the strategy: every result carries the unmasked mean."""
    return _round(strategy, start, [mean.astype(np.float32)] * SITES, [1] * SITES, server_round)


def test_secagg_rejects_a_sum_beyond_k_times_the_bound() -> None:
    config = _config(secagg=True)
    strategy = server_strategy(config, None)
    assert isinstance(strategy, BoundedUpdates)
    rng = np.random.default_rng(4)
    start = rng.normal(size=DIM).astype(np.float32)
    unit = rng.normal(size=DIM)
    unit /= np.linalg.norm(unit)
    # Honest sites, each at the bound in the same direction: the sum is K x bound, accepted.
    inside = start + BOUND * unit
    np.testing.assert_allclose(_secagg_round(strategy, start, inside, 1), inside, atol=1e-6)
    # One site sends 1000 times the bound (or claims a weight that makes its update dominate
    # the weighted mean): the round is rejected and the global model does not move.
    honest = [BOUND * unit, -BOUND * unit]
    attacked = start + (sum(honest) + 1000 * BOUND * unit) / SITES
    np.testing.assert_allclose(_secagg_round(strategy, start, attacked, 2), start, atol=1e-6)
    weighted = start + (10**6 * BOUND * 1.01 * unit + sum(honest)) / (10**6 + 2)
    np.testing.assert_allclose(_secagg_round(strategy, start, weighted, 3), start, atol=1e-6)
    assert strategy.rejected == [2, 3]


@pytest.fixture(scope="module")
def site():  # type: ignore[no-untyped-def]
    """One honest site of 120 rows with a fixed DP-SGD mechanism (no planning), and its model."""
    data = load_builtin(DATA)
    pre = declared_preprocessor(data)
    x = pre.transform(data.features)
    y, known = pre.encode_labels(data.labels)
    x, y = x[known][:120], y[known][:120]
    planned = Site(
        index=0,
        x_train=x,
        y_train=y,
        x_test=x[:0],
        y_test=y[:0],
        n_noisy=120.0,
        sample_rate=0.25,
        steps_per_round=8,
        noise_multiplier=1.0,
        delta=1e-5,
    )
    arch = architecture_for("logreg", n_features=pre.n_features, n_classes=2, image_shape=None)
    return planned, arch


def test_a_site_bounds_its_update_before_it_sends_it(site) -> None:
    """The honest site's update is clipped to the bound (it would be longer); a scaling
    attacker's is not, which is what the server's check on the sum catches under SecAgg+."""
    planned, arch = site
    config = _config(secagg=True)
    for malicious, attack in ((False, "none"), (True, "scaling")):
        torch.manual_seed(0)
        model = build_model(arch)
        start = [p.detach().numpy().astype(np.float64) for p in model.state_dict().values()]
        sent = local_round(
            replace(planned, malicious=malicious),
            model,
            classes=2,
            attack=attack,
            lr=config.site_lr,
            max_grad_norm=config.site_clip,
            update_bound=SITE_BOUND,
            seed=6,
        )
        norm = np.sqrt(sum(np.sum((w - s) ** 2) for w, s in zip(sent, start, strict=True)))
        if malicious:
            assert norm > 10 * SITE_BOUND
        else:
            assert norm == pytest.approx(SITE_BOUND, rel=1e-5)


def test_a_site_count_is_noised_from_the_keystream_only(site) -> None:
    """numpy's PCG64 (what drew the count before) is refused."""
    planned, _ = site
    with pytest.raises(ConfigError, match="Found Generator"):
        plan_site(
            0,
            planned.x_train,
            planned.y_train,
            planned.x_test,
            planned.y_test,
            _config(),
            batch_size=None,
            rng=np.random.default_rng(0),  # type: ignore[arg-type]
        )


def test_server_noise_comes_from_the_keystream_not_global_generators(monkeypatch) -> None:
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a global generator was used")

    for module, name in (
        (np.random, "normal"),
        (np.random, "default_rng"),
        (np.random, "randn"),
        (torch, "normal"),
        (torch, "randn"),
    ):
        monkeypatch.setattr(module, name, refuse)
    config = _config(client_dp="fixed", client_noise=1.0)
    start = np.zeros(DIM, dtype=np.float32)
    draws = []
    for _ in range(2):
        strategy = server_strategy(config, None)
        assert isinstance(strategy.generator, KeystreamGenerator) and strategy.generator.secure
        draws.append(_round(strategy, start, [start] * SITES, [1] * SITES))
    assert not np.array_equal(draws[0], draws[1])  # fresh OS-entropy keys, independent noise
    assert np.std(draws[0]) == pytest.approx(1.0 * BOUND / SITES, rel=0.5)
