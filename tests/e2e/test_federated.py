"""Federated training on Flower's simulation engine: accuracy, SecAgg+ against plain FedAvg,
robust aggregation against a sign-flipping site, per-site budgets, a sealed dataset's own
budget, and bad settings."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from securetrain.crypto.keystream import make_keystream
from securetrain.data import load_builtin
from securetrain.federated.config import FederatedConfig
from securetrain.federated.simulate import TEST_FRACTION, simulate
from securetrain.federated.sites import count_event
from securetrain.privacy import GaussianEvent, compute_epsilon, events_from_json
from securetrain.store import Store, ledger
from securetrain.train import evaluate
from securetrain.train.metrics import dp_metrics, predict_proba
from tests.helpers import one_error_line, run_cli, write_csv

DATA = "builtin:breast-cancer"


def test_three_sites_two_rounds_signed_bundle_and_each_site_charged(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert run_cli("keys", "new", "--out", str(keys)).returncode == 0
    out = tmp_path / "fed"
    r = run_cli(
        "federated",
        "simulate",
        "--data",
        DATA,
        "--sites",
        "3",
        "--rounds",
        "2",
        "--epsilon",
        "2",
        "--out",
        str(out),
        "--key",
        str(keys),
        "--seed",
        "0",
    )
    assert r.returncode == 0, r.stderr
    card = json.loads((out / "model_card.json").read_text())
    assert card["metrics"]["test_auc_ci95"] is not None  # a DP release, with its noise interval
    fed = card["federated"]
    assert (fed["sites"], fed["rounds"], fed["aggregator"]) == (3, 2, "median")
    assert fed["update_bound"]["norm"] == 1.0
    assert [s["site"] for s in fed["site_privacy"]] == [0, 1, 2]
    assert all(1.9 < s["epsilon"] <= 2.0 + 1e-9 for s in fed["site_privacy"])
    assert card["privacy"]["mechanism"] == "federated-dp-sgd"
    assert card["privacy"]["epsilon"] == pytest.approx(
        max(s["epsilon"] for s in fed["site_privacy"]), abs=1e-4
    )
    verify = run_cli("verify", str(out), "--public-key", str(keys / "signing.pub.pem"))
    assert verify.returncode == 0, verify.stderr
    digest = load_builtin(DATA).sha256
    for site in fed["site_privacy"]:
        status = ledger.status(Store(), f"{digest[:32]}-site-{site['site']}-of-3")
        assert status.spent == pytest.approx(site["epsilon"], abs=1e-3)


def _run(tmp_path: Path, name: str, **settings) -> tuple[dict, dict]:
    """The global model's exact metrics on the pooled held-out rows (the card's are noised),
    and its weights."""
    result = simulate(
        FederatedConfig(data=DATA, out=tmp_path / name, site_budget=1000.0, **settings)
    )
    x = np.concatenate([s.x_test for s in result.sites])
    y = np.concatenate([s.y_test for s in result.sites])
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    return evaluate(result.model, x, y, 2), state


def test_secagg_gives_the_fedavg_model_up_to_quantisation(tmp_path: Path) -> None:
    """Same seeds, so the same local training: SecAgg+ differs from FedAvg only by its
    quantisation (2^22 levels over [-8, 8], a step of 3.8e-6 per value and round); we allow
    1e-3 after three rounds."""
    settings = dict(sites=3, rounds=3, epsilon=2.0, seed=7)
    _, plain = _run(tmp_path, "plain", aggregator="fedavg", **settings)
    _, secure = _run(tmp_path, "secagg", secagg=True, **settings)
    for name in plain:
        torch.testing.assert_close(secure[name], plain[name], atol=1e-3, rtol=0)
        assert not torch.equal(secure[name], plain[name])  # it did go through quantisation


def test_the_update_bound_and_robust_aggregators_resist_a_sign_flipping_site(
    tmp_path: Path,
) -> None:
    """The attacker sends -5 times its update; clipped to the bound like every other update,
    it no longer drags even FedAvg (which fell below 0.8 AUC when it weighted raw updates)."""
    settings = dict(sites=5, rounds=3, epsilon=4.0, attack="sign-flip", malicious=1, seed=2)
    auc = {
        agg: _run(tmp_path, agg, aggregator=agg, **settings)[0]["test_auc"]
        for agg in ("fedavg", "median", "trimmed-mean")
    }
    assert min(auc.values()) >= 0.9, auc


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--secagg", "--aggregator", "median"], "cannot be combined"),
        (["--sites", "3", "--attack", "sign-flip", "--malicious", "3"], "between 0 and 2. Found 3"),
        (["--partition", "dirichlet:abc"], "dirichlet:ALPHA"),
        (["--aggregator", "mean"], "Found 'mean'"),
        (["--attack", "sign-flip"], "needs --malicious"),
        (["--secagg", "--client-dp", "fixed", "--client-noise", "1"], "cannot be combined"),
    ],
)
def test_bad_federated_settings_get_one_line_errors(tmp_path: Path, args, phrase) -> None:
    r = run_cli(
        "federated",
        "simulate",
        "--data",
        DATA,
        "--epsilon",
        "1",
        "--out",
        str(tmp_path / "x"),
        *args,
    )
    one_error_line(r, 2, phrase)
    assert not (tmp_path / "x").exists()


def _assert_metrics_are_an_accounted_release(result, config: FederatedConfig) -> None:
    """The card's held-out metrics are one Gaussian release from the seeded keystream (they
    reproduce from it, and are not the exact ones); the release is in the card's events and in
    every site's ledger charge; the card names the generators."""
    card = result.card
    x = np.concatenate([s.x_test for s in result.sites])
    y = np.concatenate([s.y_test for s in result.sites])
    release = count_event(config, held_out_metrics=True)
    assert release.count == 2  # each site's noisy count and the held-out metrics
    expected = dp_metrics(
        predict_proba(result.model, x),
        y,
        2,
        sigma=release.noise_multiplier,
        n_noisy=sum(s.n_noisy for s in result.sites) * TEST_FRACTION / (1 - TEST_FRACTION),
        rng=make_keystream(config.seed, stream="metrics"),
    )
    assert card.metrics.model_dump(exclude={"note"}) == expected
    assert card.metrics.test_auc != evaluate(result.model, x, y, 2)["test_auc"]
    assert "one of privacy.events" in card.metrics.note
    events = events_from_json(card.privacy.events)
    assert events[0] == GaussianEvent(release.noise_multiplier, 2)
    assert card.privacy.rng is not None and f"seed {config.seed}" in card.privacy.rng
    digest = load_builtin(DATA).sha256
    for site in result.sites:
        assert site.events[0] == events[0]
        status = ledger.status(
            Store(config.store), f"{digest[:32]}-site-{site.index}-of-{config.sites}"
        )
        assert status.spent == pytest.approx(compute_epsilon(site.events, delta=1e-5), abs=1e-3)


def test_client_level_dp_is_recorded_with_its_epsilon(tmp_path: Path) -> None:
    config = FederatedConfig(
        data=DATA,
        out=tmp_path / "cdp",
        sites=3,
        rounds=2,
        epsilon=2.0,
        seed=3,
        client_dp="fixed",
        client_noise=0.5,
        client_clip=5.0,
        site_budget=1000.0,
        store=f"sqlite:///{tmp_path / 'ledger.db'}",
    )
    result = simulate(config)
    _assert_metrics_are_an_accounted_release(result, config)
    cdp = result.card.federated["client_level_dp"]
    assert (cdp["clipping"], cdp["noise_multiplier"], cdp["clipping_norm"]) == ("fixed", 0.5, 5.0)
    assert cdp["epsilon"] == pytest.approx(
        compute_epsilon([GaussianEvent(0.5, 2)], delta=1e-5), rel=1e-9
    )
    x = np.concatenate([s.x_test for s in result.sites])
    y = np.concatenate([s.y_test for s in result.sites])
    assert evaluate(result.model, x, y, 2)["test_auc"] > 0.5


def _spent(show: str) -> float:
    return float(show.split("spent + reserved (PLD):")[1].split()[0])


def test_simulate_on_sealed_data_charges_its_budget_and_is_refused_when_spent(
    tmp_path: Path,
) -> None:
    """The sites split the sealed rows, so the dataset is charged one site's events, before it
    is decrypted; once the budget is spent the next run is refused before decryption."""
    env = {"SECURETRAIN_HOME": str(tmp_path / "home")}
    keys = tmp_path / "keys"
    assert run_cli("keys", "new", "--out", str(keys), env=env).returncode == 0
    data = load_breast_cancer()
    columns = {f"x{i}": data.data[:, i] for i in range(4)}
    columns["diagnosis"] = np.where(data.target == 1, "benign", "malignant").tolist()
    csv = write_csv(pa.table(columns), tmp_path / "ward.csv")
    schema = {
        "columns": {f"x{i}": {"bounds": [0.0, float(data.data[:, i].max())]} for i in range(4)},
        "classes": ["benign", "malignant"],
    }
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    sealed = tmp_path / "ward.sealed"
    seal = run_cli(
        "seal",
        str(csv),
        "--key",
        str(keys),
        "--label",
        "diagnosis",
        "--schema",
        str(tmp_path / "schema.json"),
        "--out",
        str(sealed),
        env=env,
    )
    assert seal.returncode == 0, seal.stderr
    assert run_cli("budget", "set", str(sealed), "--epsilon", "1.2", env=env).returncode == 0
    before = run_cli("budget", "show", str(sealed), env=env)
    assert before.returncode == 0 and _spent(before.stdout) == 0.0

    def federated(out: str):
        return run_cli(
            "federated",
            "simulate",
            "--data",
            str(sealed),
            "--key",
            str(keys),
            "--sites",
            "3",
            "--rounds",
            "1",
            "--local-epochs",
            "1",
            "--epsilon",
            "1",
            "--out",
            str(tmp_path / out),
            env=env,
        )

    first = federated("fed1")
    assert first.returncode == 0, first.stderr
    after = run_cli("budget", "show", str(sealed), env=env)
    assert 0.9 < _spent(after.stdout) <= 1.0 + 1e-6
    assert "completed" in after.stdout
    card = json.loads((tmp_path / "fed1" / "model_card.json").read_text())
    assert card["federated"]["charged_to"].startswith("the sealed dataset's own budget")
    sealed_id = card["data"]["sealed"]["dataset_id"]
    assert f"({sealed_id})" in card["federated"]["charged_to"]
    second = federated("fed2")
    one_error_line(second, 4, "Privacy budget of ward.sealed exceeded")
    assert not (tmp_path / "fed2").exists()
    assert _spent(run_cli("budget", "show", str(sealed), env=env).stdout) == _spent(after.stdout)
    log = run_cli("log", "show", env=env).stdout
    assert log.count("run.reserved") == 1 and log.count("run.refused") == 1
    assert log.count("run.running") == 1  # only the first run decrypted anything
    assert "federated site" not in log  # no per-site budgets were made up for sealed data
