"""Deployment mode: the server and each site as separate processes, on separate machines.

``serve`` starts a Flower SuperLink (TLS, node authentication), registers the sites' public keys,
waits for them to connect, submits the run and writes the signed bundle. ``join`` starts a site's
Flower SuperNode, which trains on the site's own data (checked and charged to its own budget).
Both drive Flower's own executables and CLI (:mod:`securetrain.federated.processes`), with
telemetry and runtime dependency installation disabled; the Flower app they run is
:mod:`securetrain.federated.components`. The SuperLink's Control API takes only the server's own
token, and a site runs only the app bundle it pinned (:mod:`securetrain.federated.trust`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securetrain.bundle import ModelCard, Signer, write_bundle
from securetrain.bundle.card import DataSection, SplitSection
from securetrain.data.preprocess import Preprocessor, declared_preprocessor
from securetrain.errors import ConfigError, SecureTrainError
from securetrain.federated.apps import set_weights
from securetrain.federated.card import federated_card
from securetrain.federated.components import RESULT_DIR, SETTINGS
from securetrain.federated.config import FederatedConfig
from securetrain.federated.pki import (
    ServerFiles,
    check_site_private_key,
    check_site_public_key,
)
from securetrain.federated.processes import (
    CONNECTION,
    POLL_SECONDS,
    SuperLink,
    executable,
    exit_on_sigterm,
    flower_env,
    last_line,
    stop,
)
from securetrain.federated.trust import (
    APP_PYPROJECT,
    PINNED_FAB_ENV,
    clientapp_wrapper,
    pinned_fab_hash,
)
from securetrain.outputs import check_new_dir
from securetrain.train import (
    BuiltinSource,
    KeySettings,
    TrainConfig,
    architecture_for,
    build_model,
    load_data,
    parse_source,
    resolve_keys,
)

RUN_POLL_SECONDS = 4.0  # each poll is a `flwr` CLI process
FINAL_PUSH_GRACE = 5.0
RETRY_SECONDS = 3.0
NOT_ACTIVATED = "Failed to activate SuperNode"  # the SuperLink does not know the node key

Progress = Callable[[str], None]


@dataclass
class DeployResult:
    card: ModelCard
    bundle: Path
    run_id: str


def _app_dir(work: Path) -> Path:
    app = work / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    return app


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _reports(result: Path, sites: int) -> list[dict]:
    rounds = json.loads((result / "reports.json").read_text())
    last = rounds[-1]
    if len(last) != sites:
        raise SecureTrainError(f"Expected reports from {sites} sites; {len(last)} reported.")
    digests = {json.dumps(r["preprocessor"], sort_keys=True) for r in last}
    labels = {r["label"] for r in last}
    if len(digests) != 1 or len(labels) != 1:
        raise SecureTrainError(
            "The sites declare different schemas (columns, bounds, categories or classes); "
            "every site must seal its data with the same schema."
        )
    return [{"site": i, **r} for i, r in enumerate(sorted(last, key=lambda r: r["name"]))]


def _checked_setting(
    config: FederatedConfig, files: ServerFiles, site_keys: list[Path]
) -> tuple[FederatedConfig, ServerFiles]:
    """The run's setting for these sites and the server's files, checked before anything starts."""
    config = FederatedConfig.model_validate({**config.model_dump(), "sites": len(site_keys)})
    if config.attack != "none":
        raise ConfigError("Attacks are simulated only: use `securetrain federated simulate`.")
    assert config.out is not None
    check_new_dir(config.out)
    files = ServerFiles(files.root.resolve())
    files.check()
    for key in site_keys:
        check_site_public_key(key)
    return config, files


def _wait_for_sites(link: SuperLink, sites: int, deadline: float, timeout: float) -> None:
    while (online := link.online()) < sites:
        link.check_alive()
        if time.monotonic() > deadline:
            raise SecureTrainError(
                f"Only {online} of {sites} sites connected within {timeout:.0f} s."
            )
        time.sleep(RUN_POLL_SECONDS)


def _submit(link: SuperLink, work: Path, config: FederatedConfig, result: Path) -> str:
    """Submit securetrain's app with the run's settings; return the run's id."""
    run_config = work / "run.toml"
    run_config.write_text(
        f"{SETTINGS} = {_toml_string(config.site_settings())}\n"
        f"{RESULT_DIR} = {_toml_string(str(result))}\n"
    )
    submitted = link.cli("run", str(_app_dir(work)), CONNECTION, "--run-config", str(run_config))
    return str(submitted["run-id"])


def _wait_for_run(link: SuperLink, run_id: str, deadline: float, timeout: float) -> None:
    """Wait until the run finishes; a run that did not complete is an error with its details."""
    while True:
        link.check_alive()
        runs = link.cli("ls", CONNECTION, "--run-id", run_id)["runs"]
        status = runs[0]["status"]
        if status.startswith("finished"):
            break
        if time.monotonic() > deadline:
            link.cli("stop", run_id, CONNECTION)
            raise SecureTrainError(f"The run did not finish within {timeout:.0f} s.")
        time.sleep(RUN_POLL_SECONDS)
    if status != "finished:completed":
        raise SecureTrainError(
            f"The federated run {status.removeprefix('finished:')}: "
            f"{runs[0].get('status-details') or 'no details'}"
        )


def _run(
    config: FederatedConfig,
    files: ServerFiles,
    site_keys: list[Path],
    *,
    host: str,
    port: int,
    timeout: float,
    log: Path | None,
    say: Progress,
) -> tuple[str, list[dict], list[np.ndarray]]:
    """One run on a SuperLink of its own: the run's id, the sites' reports, the final weights."""
    work = Path(tempfile.mkdtemp(prefix="securetrain-federated-"))
    link: SuperLink | None = None
    try:
        result = work / "result"
        result.mkdir()
        link = SuperLink(work, files, host, port, log)
        link.wait_ready()
        say(f"SuperLink up on {host}:{port} (TLS, node authentication)")
        for i, key in enumerate(site_keys):
            link.cli("supernode", "register", str(key), CONNECTION, "--name", f"site-{i + 1}")
        deadline = time.monotonic() + timeout
        _wait_for_sites(link, config.sites, deadline, timeout)
        say(f"{config.sites} sites connected")
        run_id = _submit(link, work, config, result)
        say(f"run {run_id} submitted: {config.rounds} rounds")
        _wait_for_run(link, run_id, deadline, timeout)
        reports = _reports(result, config.sites)
        with np.load(result / "weights.npz", allow_pickle=False) as npz:
            weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        return run_id, reports, weights
    finally:
        if link is not None:
            stop(link.proc)
        shutil.rmtree(work, ignore_errors=True)


def _write_bundle(
    config: FederatedConfig,
    reports: list[dict],
    weights: list[np.ndarray],
    signer: Signer | None,
) -> tuple[ModelCard, Path]:
    """The global model and its card (the sites' reports, no data at the server), signed."""
    pre = Preprocessor.model_validate(reports[0]["preprocessor"])
    arch = architecture_for(
        config.model, n_features=pre.n_features, n_classes=len(pre.label.classes), image_shape=None
    )
    model = build_model(arch)
    set_weights(model, weights)
    model.eval()
    card = federated_card(
        config=config,
        pre=pre,
        arch=arch,
        lr=config.site_lr,
        clip=config.site_clip,
        data=DataSection(
            source=f"federated deployment: {config.sites} sites, each on its own data",
            label=reports[0]["label"],
            n_train=sum(r["n_train"] for r in reports),
            n_test=0,
            counts="sum of the sites' Gaussian-noised counts",
            identity=None,
            split=SplitSection(
                method="none: each site trains on all its rows; no held-out data here"
            ),
        ),
        metrics={"note": "the server holds no data; each site can evaluate the bundle locally"},
        site_reports=reports,
        signer=signer,
        mode="deployment",
        charged_to="each site's own budget, in its own ledger",
    )
    assert config.out is not None
    return card, write_bundle(config.out, model.state_dict(), card, signer=signer)


def serve(
    config: FederatedConfig,
    files: ServerFiles,
    site_keys: list[Path],
    *,
    host: str = "127.0.0.1",
    port: int = 9092,
    timeout: float = 1800.0,
    log: Path | None = None,
    progress: Progress | None = None,
) -> DeployResult:
    """Run one federated training with the sites whose keys are given; write the bundle."""
    config, files = _checked_setting(config, files, site_keys)
    keys = resolve_keys(KeySettings(key_dir=config.key_dir, passphrase_env=config.passphrase_env))
    exit_on_sigterm()
    run_id, reports, weights = _run(
        config,
        files,
        site_keys,
        host=host,
        port=port,
        timeout=timeout,
        log=log,
        say=progress or (lambda _message: None),
    )
    card, bundle = _write_bundle(config, reports, weights, keys.signer)
    return DeployResult(card, bundle, run_id)


@dataclass
class SiteOptions:
    """A site's side of a deployment. ``data`` etc. never leave this machine."""

    server: str
    ca: Path
    node_key: Path
    train: TrainConfig
    name: str = "site"
    runtime_port: int = 9094
    timeout: float = 1800.0
    log: Path | None = None


def _node_config(site: SiteOptions, done: Path) -> str:
    """The SuperNode's ``--node-config``: where this site's data, keys and ledger are (read only
    by its own ClientApp), and the file its ClientApp writes when the run is over."""
    source = parse_source(site.train.data)
    node_config = {
        "data": str(source) if isinstance(source, BuiltinSource) else str(source.path.resolve()),
        "key-dir": site.train.key_dir,
        "public-key": site.train.public_key,
        "passphrase-env": site.train.passphrase_env,
        "store": site.train.store,
        "label": site.train.label,
        "schema": site.train.schema_path,
        "name": site.name,
        "done-file": done,
    }
    return " ".join(
        f"{k}={_toml_string(str(Path(v).resolve()) if isinstance(v, Path) else str(v))}"
        for k, v in node_config.items()
        if v is not None
    )


def _supernode_command(site: SiteOptions, node_config: str) -> list[str]:
    return [
        executable("flower-supernode"),
        "--superlink",
        site.server,
        "--root-certificates",
        str(site.ca.resolve()),
        "--auth-supernode-private-key",
        str(site.node_key.resolve()),
        "--node-config",
        node_config,
        "--port",
        str(site.runtime_port),
    ]


def _site_env(work: Path) -> dict[str, str]:
    """The SuperNode starts each ClientApp as ``flwr-clientapp``: this site's finds the pinned
    one first on its PATH."""
    wrapper = clientapp_wrapper(work / "bin")
    env = flower_env(work)
    env["PATH"] = os.pathsep.join([str(wrapper.parent), env["PATH"]])
    env[PINNED_FAB_ENV] = pinned_fab_hash()
    return env


def _take_part(
    site: SiteOptions, start: Callable[[], subprocess.Popen], log: Path, done: Path, say: Progress
) -> None:
    """Run the SuperNode until its ClientApp writes ``done``; restart it while the server has
    not yet registered this site's node key."""
    deadline = time.monotonic() + site.timeout
    proc = start()
    try:
        refusals = 0
        while not done.exists():
            if proc.poll() is not None:
                if NOT_ACTIVATED not in log.read_text(errors="replace"):
                    raise SecureTrainError(
                        f"The site's SuperNode stopped (exit {proc.returncode}): {last_line(log)}"
                    )
                refusals += 1
                say(f"waiting for {site.server} to accept {site.name}'s node key")
                time.sleep(RETRY_SECONDS)
                log.write_text("")
                proc = start()
            if time.monotonic() > deadline:
                if refusals:
                    raise SecureTrainError(
                        f"The server at {site.server} did not accept this site's node key "
                        f"within {site.timeout:.0f} s: is its node.pub registered at the server?"
                    )
                raise SecureTrainError(
                    f"No federated run completed within {site.timeout:.0f} s: {last_line(log)}"
                )
            time.sleep(POLL_SECONDS)
        time.sleep(FINAL_PUSH_GRACE)  # the last reply is pushed right after the done file
    finally:
        stop(proc)


def join(site: SiteOptions, progress: Progress | None = None) -> dict:
    """Take part in one federated run; return what this site reported (its ε)."""
    say = progress or (lambda _message: None)
    check_site_private_key(site.node_key)
    if not site.ca.is_file():
        raise ConfigError(f"Server CA certificate not found: {str(site.ca)!r}.")
    declared_preprocessor(load_data(site.train))  # fail here, before connecting: keys, schema
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="securetrain-site-"))
    try:
        done = work / "done.json"
        log = site.log or work / "supernode.log"
        command = _supernode_command(site, _node_config(site, done))
        env = _site_env(work)

        def start() -> subprocess.Popen:
            with log.open("a") as out:
                return subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work
                )

        say(f"connecting to {site.server} as {site.name}")
        _take_part(site, start, log, done, say)
        return json.loads(done.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
