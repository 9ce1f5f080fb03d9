"""A deployed site holds the server to the rounds and settings it charged its budget for: the
site's own ClientApp, driven with Flower messages in this process (no SuperLink, no SuperNode)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import pytest
from flwr.app import Context, Message, Metadata, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays

from securetrain.data import load_builtin
from securetrain.errors import ConfigError, DataError
from securetrain.federated.apps import get_weights
from securetrain.federated.components import SETTINGS, client_app
from securetrain.federated.config import FederatedConfig
from securetrain.store import Store, ledger
from securetrain.train.models import architecture_for, build_model

DATA = "builtin:breast-cancer"
ROUNDS = 2


def _settings(**changes) -> str:
    config = FederatedConfig(data=DATA, sites=3, rounds=ROUNDS, epsilon=1.0, local_epochs=1)
    return config.model_copy(update=changes).site_settings()


def _context(tmp_path: Path, settings: str) -> Context:
    node = {"data": DATA, "store": f"sqlite:///{tmp_path / 'site.db'}", "name": "a"}
    return Context(
        run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={SETTINGS: settings}
    )


def _fit(context: Context, weights: list[np.ndarray], server_round: int) -> list[np.ndarray]:
    """One fit message, as Flower's default workflow sends it; the site's updated weights."""
    ins = FitIns(ndarrays_to_parameters(weights), {"round": server_round})
    metadata = Metadata(
        run_id=context.run_id,
        message_id=f"fit-{server_round}",
        src_node_id=1,
        dst_node_id=context.node_id,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    message = Message(content=compat.fitins_to_recorddict(ins, True), metadata=metadata)
    reply = client_app(message, context)
    assert not reply.has_error(), reply.error
    return parameters_to_ndarrays(compat.recorddict_to_fitres(reply.content, False).parameters)


def _initial() -> list[np.ndarray]:
    arch = architecture_for("logreg", n_features=30, n_classes=2, image_shape=None)
    return get_weights(build_model(arch))


def _runs(tmp_path: Path) -> list:
    store = Store(f"sqlite:///{tmp_path / 'site.db'}")
    return ledger.status(store, load_builtin(DATA).sha256[:32]).runs


def test_a_fit_beyond_the_charged_rounds_is_refused(tmp_path: Path) -> None:
    context = _context(tmp_path, _settings())
    weights = _initial()
    for server_round in range(1, ROUNDS + 1):
        updated = _fit(context, weights, server_round)
        assert any(not np.array_equal(u, w) for u, w in zip(updated, weights, strict=True))
        weights = updated
    (run,) = _runs(tmp_path)
    assert run.state == "completed"
    # The server claims the same round number again, then the next one: both are refused.
    for server_round in (ROUNDS, ROUNDS + 1):
        with pytest.raises(ConfigError, match=f"round {ROUNDS + 1}.*for {ROUNDS} rounds"):
            _fit(context, weights, server_round)
    assert [r.run_id for r in _runs(tmp_path)] == [run.run_id]


@pytest.mark.parametrize(
    "change", [{"epsilon": 4.0}, {"rounds": ROUNDS + 3}, {"lr": 5.0}, {"max_grad_norm": 10.0}]
)
def test_settings_changed_after_the_first_round_are_refused(tmp_path: Path, change) -> None:
    context = _context(tmp_path, _settings())
    weights = _fit(context, _initial(), 1)
    context.run_config[SETTINGS] = _settings(**change)
    with pytest.raises(ConfigError, match="changed the run's settings") as refused:
        _fit(context, weights, 2)
    assert "\n" not in str(refused.value)
    (run,) = _runs(tmp_path)
    assert run.state == "reserved"  # charged for the first round; never completed


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"lr": -1.0}, "Learning rate must be a positive finite number. Found -1.0"),
        ({"max_grad_norm": float("nan")}, "Clipping bound must be a positive finite number"),
        ({"rounds": 10**9}, "Rounds must be between 1 and 1000. Found 1000000000"),
        ({"local_epochs": 0}, "Local epochs must be between 1 and 1000. Found 0"),
        ({"batch_size": 0}, "Batch size must be at least 1. Found 0"),
        ({"epsilon": -2.0}, "Epsilon must be a positive finite number. Found -2.0"),
        ({"client_dp": "adaptive", "client_noise": 1.0}, "Adaptive client clipping"),
    ],
)
def test_absurd_settings_are_refused_before_any_charge(tmp_path: Path, change, phrase) -> None:
    settings = json.loads(_settings())
    settings.update(change)
    context = _context(tmp_path, json.dumps(settings))
    with pytest.raises(ConfigError, match=phrase) as refused:
        _fit(context, _initial(), 1)
    assert "\n" not in str(refused.value)
    with pytest.raises(DataError, match="No budget is set"):
        _runs(tmp_path)
