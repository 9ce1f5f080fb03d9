"""Deployment mode: the server and each site as separate processes, on separate machines.

``serve`` starts a Flower SuperLink (TLS, node authentication), registers the sites' public keys,
waits for them to connect, submits the run and writes the signed bundle. ``join`` starts a site's
Flower SuperNode, which trains on the site's own data (checked and charged to its own budget).
Both drive Flower's own executables and CLI, with ``FLWR_TELEMETRY_ENABLED=0`` and runtime
dependency installation disabled; the Flower app is ``securetrain.federated.deploy``. The
SuperLink's Control API takes only the server's own token, and a site runs only the app bundle
it pinned (``securetrain.federated.trust``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securetrain.bundle import ModelCard, write_bundle
from securetrain.bundle.card import DataSection
from securetrain.data.preprocess import Preprocessor, declared_preprocessor
from securetrain.errors import ConfigError, SecureTrainError
from securetrain.federated.apps import set_weights
from securetrain.federated.card import federated_card
from securetrain.federated.config import FederatedConfig
from securetrain.federated.deploy import RESULT_DIR, SETTINGS
from securetrain.federated.pki import (
    ServerFiles,
    check_site_private_key,
    check_site_public_key,
)
from securetrain.federated.trust import (
    APP_PYPROJECT,
    CONTROL_TOKEN_ENV,
    PINNED_FAB_ENV,
    clientapp_wrapper,
    new_control_token,
    pinned_fab_hash,
    store_cli_token,
)
from securetrain.outputs import check_new_dir
from securetrain.train import TrainConfig, architecture_for, build_model, load_data, resolve_keys

CONNECTION = "securetrain"
START_TIMEOUT = 60.0
POLL_SECONDS = 1.0
RUN_POLL_SECONDS = 4.0  # each poll is a `flwr` CLI process
FINAL_PUSH_GRACE = 5.0
RETRY_SECONDS = 3.0
NOT_ACTIVATED = "Failed to activate SuperNode"  # the SuperLink does not know the node key

Progress = Callable[[str], None]


def _executable(name: str) -> str:
    """Flower's executables from the environment securetrain runs in."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise ConfigError(f"Flower's {name} executable was not found beside {sys.executable}.")
    return found


def _flower_env(home: Path) -> dict[str, str]:
    """Flower's processes start more of its executables (flower-superexec, flwr-serverapp,
    flwr-clientapp) by name: they must be on PATH."""
    path = os.pathsep.join([str(Path(_executable("flwr")).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0"}


def _last_line(log: Path) -> str:
    """What a Flower process said when it failed, on one line, without colour codes: the text
    of its last exit-code block, else its last error line, else its last line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or ["(no output)"]
    exits = [i for i, ln in enumerate(lines) if "Exit Code:" in ln]
    if exits:
        block = []
        for ln in lines[exits[-1] + 1 :]:
            if ln.startswith("For more information") or ln.startswith("INFO"):
                break
            block.append(ln)
        if block:
            return " ".join(block)
    errors = [ln for ln in lines if re.search(r"ERROR|Error:|Exception", ln)]
    return (errors or lines)[-1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exit_on_sigterm() -> None:
    """A terminated server or site still stops its Flower processes (``finally`` runs)."""
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(128 + signal.SIGTERM))


@dataclass
class DeployResult:
    card: ModelCard
    bundle: Path
    run_id: str


class _Link:
    """A running SuperLink and the CLI connection to it."""

    def __init__(
        self, work: Path, files: ServerFiles, host: str, port: int, log: Path | None
    ) -> None:
        self.home = work / "flwr"
        self.home.mkdir()
        address = f"127.0.0.1:{port}"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{address}"\nroot-certificates = "{files.ca}"\n'
        )
        token_file = work / "control.token"
        store_cli_token(self.home, address, new_control_token(token_file))
        self.log = log or work / "superlink.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "securetrain.federated.trust",
                    "superlink",
                    "--ssl-certfile",
                    str(files.certificate),
                    "--ssl-keyfile",
                    str(files.private_key),
                    "--ssl-ca-certfile",
                    str(files.ca),
                    "--enable-supernode-auth",
                    "--disable-runtime-dependency-installation",
                    "--host",
                    host,
                    "--port",
                    str(port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**_flower_env(self.home), CONTROL_TOKEN_ENV: str(token_file)},
                cwd=work,
            )

    def cli(self, *args: str) -> dict:
        """One ``flwr`` command with JSON output."""
        result = subprocess.run(
            [_executable("flwr"), *args, "--format", "json"],
            capture_output=True,
            text=True,
            env={**_flower_env(self.home), "COLUMNS": "200"},
            timeout=120,
        )
        try:
            doc = json.loads(result.stdout[result.stdout.index("{") :])
        except ValueError:
            doc = {}
        if result.returncode != 0 or not doc.get("success"):
            message = doc.get("error-message") or (result.stderr or result.stdout).strip()
            raise SecureTrainError(f"flwr {args[0]} failed: {' '.join(message.split())[:300]}")
        return doc

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise SecureTrainError(
                f"The SuperLink stopped (exit {self.proc.returncode}): {_last_line(self.log)}"
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.check_alive()
            try:
                self.cli("supernode", "ls", CONNECTION)
                return
            except SecureTrainError:
                if time.monotonic() > deadline:
                    raise SecureTrainError(
                        f"The SuperLink did not answer within {START_TIMEOUT:.0f} s: "
                        f"{_last_line(self.log)}"
                    ) from None
                time.sleep(POLL_SECONDS)

    def online(self) -> int:
        nodes = self.cli("supernode", "ls", CONNECTION).get("nodes", [])
        return sum(1 for n in nodes if n.get("status") == "online")


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
    say = progress or (lambda _message: None)
    config = config.model_copy(update={"sites": len(site_keys)})
    config.validate_choices()
    if config.attack != "none":
        raise ConfigError("Attacks are simulated only: use `securetrain federated simulate`.")
    assert config.out is not None
    check_new_dir(config.out)
    files = ServerFiles(files.root.resolve())
    files.check()
    for key in site_keys:
        check_site_public_key(key)
    keys = resolve_keys(TrainConfig(key_dir=config.key_dir, passphrase_env=config.passphrase_env))
    _exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="securetrain-federated-"))
    link: _Link | None = None
    try:
        result = work / "result"
        result.mkdir()
        link = _Link(work, files, host, port, log)
        link.wait_ready()
        say(f"SuperLink up on {host}:{port} (TLS, node authentication)")
        for i, key in enumerate(site_keys):
            link.cli("supernode", "register", str(key), CONNECTION, "--name", f"site-{i + 1}")
        deadline = time.monotonic() + timeout
        while (online := link.online()) < config.sites:
            link.check_alive()
            if time.monotonic() > deadline:
                raise SecureTrainError(
                    f"Only {online} of {config.sites} sites connected within {timeout:.0f} s."
                )
            time.sleep(RUN_POLL_SECONDS)
        say(f"{config.sites} sites connected")
        run_config = work / "run.toml"
        run_config.write_text(
            f"{SETTINGS} = {_toml_string(config.site_settings())}\n"
            f"{RESULT_DIR} = {_toml_string(str(result))}\n"
        )
        run_id = str(
            link.cli("run", str(_app_dir(work)), CONNECTION, "--run-config", str(run_config))[
                "run-id"
            ]
        )
        say(f"run {run_id} submitted: {config.rounds} rounds")
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
        reports = _reports(result, config.sites)
        with np.load(result / "weights.npz", allow_pickle=False) as npz:
            weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    finally:
        if link is not None:
            _stop(link.proc)
        shutil.rmtree(work, ignore_errors=True)
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
            split={"method": "none: each site trains on all its rows; no held-out data here"},
        ),
        metrics={"note": "the server holds no data; each site can evaluate the bundle locally"},
        site_reports=reports,
        signer=keys.signer,
        mode="deployment",
        charged_to="each site's own budget, in its own ledger",
    )
    bundle = write_bundle(config.out, model.state_dict(), card, signer=keys.signer)
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


def join(site: SiteOptions, progress: Progress | None = None) -> dict:
    """Take part in one federated run; return what this site reported (its ε)."""
    say = progress or (lambda _message: None)
    check_site_private_key(site.node_key)
    if not site.ca.is_file():
        raise ConfigError(f"Server CA certificate not found: {str(site.ca)!r}.")
    declared_preprocessor(load_data(site.train))  # fail here, before connecting: keys, schema
    _exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="securetrain-site-"))
    done = work / "done.json"
    node_config = {
        "data": str(Path(site.train.data).resolve())
        if not site.train.data.startswith("builtin:")
        else site.train.data,
        "key-dir": site.train.key_dir,
        "public-key": site.train.public_key,
        "passphrase-env": site.train.passphrase_env,
        "store": site.train.store,
        "label": site.train.label,
        "schema": site.train.schema_path,
        "name": site.name,
        "done-file": done,
    }
    rendered = " ".join(
        f"{k}={_toml_string(str(Path(v).resolve()) if isinstance(v, Path) else str(v))}"
        for k, v in node_config.items()
        if v is not None
    )
    log = site.log or work / "supernode.log"
    command = [
        _executable("flower-supernode"),
        "--superlink",
        site.server,
        "--root-certificates",
        str(site.ca.resolve()),
        "--auth-supernode-private-key",
        str(site.node_key.resolve()),
        "--node-config",
        rendered,
        "--port",
        str(site.runtime_port),
    ]

    # The SuperNode starts each ClientApp as `flwr-clientapp`: this site's finds the pinned one.
    wrapper = clientapp_wrapper(work / "bin")
    env = _flower_env(work)
    env["PATH"] = os.pathsep.join([str(wrapper.parent), env["PATH"]])
    env[PINNED_FAB_ENV] = pinned_fab_hash()

    def start() -> subprocess.Popen:
        with log.open("a") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)

    def refused(proc: subprocess.Popen) -> bool:
        return proc.poll() is not None and NOT_ACTIVATED in log.read_text(errors="replace")

    try:
        say(f"connecting to {site.server} as {site.name}")
        deadline = time.monotonic() + site.timeout
        proc = start()
        try:
            refusals = 0
            while not done.exists():
                if proc.poll() is not None:
                    if not refused(proc):
                        raise SecureTrainError(
                            f"The site's SuperNode stopped (exit {proc.returncode}): "
                            f"{_last_line(log)}"
                        )
                    # The server may not have registered this site's key yet: try again.
                    refusals += 1
                    say(f"waiting for {site.server} to accept {site.name}'s node key")
                    time.sleep(RETRY_SECONDS)
                    log.write_text("")
                    proc = start()
                if time.monotonic() > deadline:
                    if refusals:
                        raise SecureTrainError(
                            f"The server at {site.server} did not accept this site's node key "
                            f"within {site.timeout:.0f} s: is its node.pub registered at the "
                            "server?"
                        )
                    raise SecureTrainError(
                        f"No federated run completed within {site.timeout:.0f} s: {_last_line(log)}"
                    )
                time.sleep(POLL_SECONDS)
            time.sleep(FINAL_PUSH_GRACE)  # the last reply is pushed right after the done file
        finally:
            _stop(proc)
        return json.loads(done.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
