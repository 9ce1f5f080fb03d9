"""The Flower components of a federated deployment, which Flower's own processes load by name
(the app bundle's ``[tool.flwr.app.components]``): the SuperLink runs ``server_app``, each site's
SuperNode runs ``client_app`` on its own data. :mod:`securetrain.federated.deployment` starts
those processes.

The server sends the run's settings (``settings``, JSON) in the run config. A site reads its data,
keys and ledger from its node config, which never leaves its machine; it plans its own DP-SGD,
charges its own budget before it decrypts anything, and reports back only weights, its noisy row
count, its privacy loss and the (public) declared transform.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import ConfigRecord, Context, Message, MessageType, NDArrays, Scalar
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from securetrain.bundle.card import Architecture
from securetrain.crypto.keystream import make_keystream
from securetrain.data import TabularData
from securetrain.data.preprocess import declared_preprocessor
from securetrain.errors import ConfigError
from securetrain.federated.apps import admit_round, get_weights, set_weights
from securetrain.federated.config import FederatedConfig
from securetrain.federated.sites import Site, local_round, plan_site
from securetrain.federated.strategies import SITE_WEIGHT, fit_workflow, server_strategy
from securetrain.privacy import events_to_json
from securetrain.store import Store, ledger
from securetrain.train import TrainConfig, architecture_for, build_model, load_data

SETTINGS = "settings"
RESULT_DIR = "result-dir"
SITE_STATE = "securetrain.site"
REPORT = "report"


def settings_from(run_config: dict[str, Any]) -> FederatedConfig:
    """The run's settings as the server sent them, checked at the site."""
    try:
        config = FederatedConfig(
            data="federated deployment", **json.loads(str(run_config[SETTINGS]))
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"The server sent settings this site cannot read: {' '.join(str(exc).split())[:300]}"
        ) from None
    return config


class _SiteData:
    """The site's data, decrypted in memory, encoded with the declared transform."""

    def __init__(self, node: dict[str, Any]) -> None:
        def opt(key: str) -> str | None:
            value = str(node.get(key, "") or "")
            return value or None

        self.config = TrainConfig(
            data=str(node["data"]),
            label=opt("label"),
            schema_path=Path(p) if (p := opt("schema")) else None,
            key_dir=Path(p) if (p := opt("key-dir")) else None,
            public_key=Path(p) if (p := opt("public-key")) else None,
            passphrase_env=opt("passphrase-env"),
            store=opt("store"),
        )
        self.name = opt("name") or "site"
        self.data: TabularData = load_data(self.config)  # a sealed dataset is verified here
        sealed = self.data.sealed
        self.dataset_id = sealed["dataset_id"] if sealed else self.data.sha256[:32]
        self.pre = declared_preprocessor(self.data)
        x = self.pre.transform(self.data.features)
        y, known = self.pre.encode_labels(self.data.labels)
        self.x, self.y = x[known], y[known]


def _stored_number(record: ConfigRecord, key: str) -> float:
    value = record[key]
    if not isinstance(value, int | float):
        raise ConfigError(f"The site's state holds a non-number {key}. Found {value!r}.")
    return float(value)


class DeployedSite(NumPyClient):
    """A site in a deployment: its plan and ledger charge are made once, in the first round,
    and kept in the run's context state for the later rounds. It counts the rounds itself and
    refuses, before it reads its data, any beyond those it charged or any with other settings."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.settings = settings_from(context.run_config)

    @cached_property
    def site(self) -> _SiteData:
        return _SiteData(self.context.node_config)

    def _arch(self) -> Architecture:
        return architecture_for(
            self.settings.model,
            n_features=self.site.pre.n_features,
            n_classes=len(self.site.pre.label.classes),
            image_shape=None,
        )

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return get_weights(build_model(self._arch()))

    def _plan(self) -> tuple[Site, str]:
        state = self.context.state.config_records.get(SITE_STATE)
        empty = np.zeros((0, self.site.x.shape[1]), dtype=self.site.x.dtype)
        site = plan_site(
            0,
            self.site.x,
            self.site.y,
            empty,
            self.site.y[:0],
            self.settings,
            batch_size=self.settings.batch_size,
            rng=make_keystream(),
            n_noisy=None if state is None else _stored_number(state, "n_noisy"),
        )
        if state is not None:
            return site, str(state["run_id"])
        with Store(self.site.config.store) as store:
            run_id = ledger.reserve(
                store,
                dataset_id=self.site.dataset_id,
                manifest_digest=self.site.data.sha256,
                name=Path(self.site.config.data).name,
                events=site.events,
                epsilon=site.epsilon,
                delta_partition_selection=0.0,
                parameters={"federated": True, **json.loads(self.settings.site_settings())},
            )
        self.context.state.config_records[SITE_STATE] = ConfigRecord(
            {"n_noisy": site.n_noisy, "run_id": run_id}
        )
        return site, run_id

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        round_number = admit_round(
            self.context, self.settings.site_settings(), self.settings.rounds
        )
        site, run_id = self._plan()
        model = build_model(self._arch())
        set_weights(model, parameters)
        weights = local_round(
            site,
            model,
            classes=len(self.site.pre.label.classes),
            attack="none",
            lr=self.settings.site_lr,
            max_grad_norm=self.settings.site_clip,
            update_bound=self.settings.client_clip,
            seed=None,
        )
        summary = {k: v for k, v in site.summary().items() if k not in ("site", "malicious")}
        report = {
            **summary,
            "name": self.site.name,
            "data_identity": (
                i.model_dump() if (i := self.site.data.public_identity()) is not None else None
            ),
            "label": self.site.data.label_name,
            "events": events_to_json(site.events),
            "preprocessor": self.site.pre.model_dump(mode="json"),
        }
        if round_number == self.settings.rounds:
            with Store(self.site.config.store) as store:
                ledger.transition(
                    store,
                    run_id,
                    "completed",
                    events=site.events,
                    epsilon=site.epsilon,
                    delta_partition_selection=0.0,
                    details={"federated_rounds": self.settings.rounds},
                )
            self.context.state.config_records[SITE_STATE]["final_epsilon"] = site.epsilon
        return weights, SITE_WEIGHT, {REPORT: json.dumps(report)}


def _secagg_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the SecAgg+ protocol for runs whose settings ask for it, plain fit otherwise. After
    the site's last message of the run (its last fit, or with SecAgg+ the unmasking after it),
    tell the local ``securetrain federated site`` process through its done file."""
    secagg = settings_from(context.run_config).secagg
    last_stage = True
    if secagg and msg.metadata.message_type == MessageType.TRAIN:
        configs = msg.content.config_records[RECORD_KEY_CONFIGS]
        last_stage = configs.get(Key.STAGE) == Stage.UNMASK
    reply = secaggplus_mod(msg, context, call_next) if secagg else call_next(msg, context)
    state = context.state.config_records.get(SITE_STATE)
    done_file = str(context.node_config.get("done-file", "") or "")
    if last_stage and state is not None and "final_epsilon" in state and done_file:
        Path(done_file).write_text(json.dumps({"epsilon": state["final_epsilon"]}))
    return reply


client_app = ClientApp(
    client_fn=lambda context: DeployedSite(context).to_client(), mods=[_secagg_when_asked]
)

server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    config = settings_from(context.run_config)
    result = Path(str(context.run_config[RESULT_DIR]))
    if not result.is_dir():
        raise ConfigError(f"The result directory {str(result)!r} does not exist.")
    reports: list[list[dict]] = []

    def collect(metrics: list[tuple[int, dict]]) -> dict:
        reports.append([json.loads(str(m[REPORT])) for _, m in metrics])
        return {}

    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=config.rounds),
        strategy=server_strategy(config, None, on_fit_metrics=collect),
    )
    DefaultWorkflow(fit_workflow=fit_workflow(config))(grid, legacy)
    record = legacy.state.array_records[MAIN_PARAMS_RECORD]
    np.savez(result / "weights.npz", *[a.numpy() for a in record.values()])
    (result / "reports.json").write_text(json.dumps(reports))
