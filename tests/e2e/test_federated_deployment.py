"""Deployment mode with real processes on loopback: a server (Flower SuperLink) and three sites
(SuperNodes), each with its own key set, sealed share of breast-cancer and budget store; TLS,
node authentication and SecAgg+."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

from securetrain.bundle import read_card, read_weights
from securetrain.sealed.container import read_header
from securetrain.store import Store, ledger
from securetrain.train.models import build_model
from tests.helpers import one_error_line, run_cli, write_csv

SITES = 3
EPSILON = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "securetrain", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200"},
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> dict:
    """The three sites' sealed data and keys, the server's TLS files, and one completed run."""
    root = tmp_path_factory.mktemp("deployment")
    data = load_breast_cancer()
    columns = {f"x{i}": data.data[:, i] for i in range(data.data.shape[1])}
    columns["diagnosis"] = np.where(data.target == 1, "benign", "malignant").tolist()
    table = pa.table(columns)
    schema = {
        "columns": {
            f"x{i}": {"bounds": [0.0, float(data.data[:, i].max() * 1.2)]}
            for i in range(data.data.shape[1])
        },
        "classes": ["benign", "malignant"],
    }
    (root / "schema.json").write_text(json.dumps(schema))
    shares = np.array_split(np.random.default_rng(0).permutation(table.num_rows), SITES)
    for i, rows in enumerate(shares):
        csv = write_csv(table.take(np.sort(rows)), root / f"site{i}.csv")
        _ok(run_cli("keys", "new", "--out", str(root / f"keys{i}")))
        _ok(
            run_cli(
                "seal",
                str(csv),
                "--key",
                str(root / f"keys{i}"),
                "--label",
                "diagnosis",
                "--schema",
                str(root / "schema.json"),
                "--out",
                str(root / f"site{i}.sealed"),
            )
        )
        csv.unlink()
        _ok(run_cli("federated", "init-site", "--dir", str(root / f"node{i}")))
    _ok(run_cli("federated", "init-site", "--dir", str(root / "intruder")))
    _ok(run_cli("federated", "init-server", "--dir", str(root / "tls"), "--host", "localhost"))
    _ok(
        run_cli("federated", "init-server", "--dir", str(root / "other-tls"), "--host", "localhost")
    )
    _ok(run_cli("keys", "new", "--out", str(root / "server-keys")))
    port = _free_port()
    server = _start(
        "federated",
        "server",
        "--tls",
        str(root / "tls"),
        *[a for i in range(SITES) for a in ("--site-key", str(root / f"node{i}" / "node.pub"))],
        "--rounds",
        "2",
        "--epsilon",
        str(EPSILON),
        "--secagg",
        "--key",
        str(root / "server-keys"),
        "--out",
        str(root / "model"),
        "--port",
        str(port),
        "--timeout",
        "500",
    )

    def site(node: str, ca: str, data_index: int, timeout: str = "500") -> subprocess.Popen:
        return _start(
            "federated",
            "site",
            "--server",
            f"localhost:{port}",
            "--ca",
            str(root / ca / "ca.pem"),
            "--node-key",
            str(root / node / "node.key"),
            "--data",
            str(root / f"site{data_index}.sealed"),
            "--key",
            str(root / f"keys{data_index}"),
            "--name",
            f"hospital-{node}",
            "--store",
            f"sqlite:///{root / f'store-{node}.db'}",
            "--runtime-port",
            str(_free_port()),
            "--timeout",
            timeout,
        )

    sites = [site(f"node{i}", "tls", i) for i in range(SITES)]
    intruder = site("intruder", "tls", 0, timeout="45")
    wrong_ca = site("node0", "other-tls", 0, timeout="45")
    return {
        "root": root,
        "server": _finish(server),
        "sites": [_finish(s) for s in sites],
        "intruder": _finish(intruder),
        "wrong_ca": _finish(wrong_ca),
        "shares": shares,
    }


def test_sites_and_server_complete_a_secagg_run(deployment: dict) -> None:
    root = deployment["root"]
    for result in [deployment["server"], *deployment["sites"]]:
        _ok(result)
    public = root / "server-keys" / "signing.pub.pem"
    _ok(run_cli("verify", str(root / "model"), "--public-key", str(public)))
    card = read_card(root / "model")
    fed = card.federated
    assert fed["mode"] == "deployment" and fed["secure_aggregation"] == "SecAgg+"
    assert fed["rounds"] == 2 and fed["sites"] == SITES
    names = [s["name"] for s in fed["site_privacy"]]
    assert names == [f"hospital-node{i}" for i in range(SITES)]
    for s in fed["site_privacy"]:
        assert EPSILON * 0.95 <= s["epsilon"] <= EPSILON
    assert card.privacy.epsilon == max(s["epsilon"] for s in fed["site_privacy"])
    # The global model, trained without pooling, separates the classes on all the data.
    data = load_breast_cancer()
    pre = card.model.preprocessing
    table = pa.table({f"x{i}": data.data[:, i] for i in range(data.data.shape[1])})
    x = torch.from_numpy(pre.transform(table))
    model = build_model(card.model.architecture)
    model.load_state_dict(read_weights(root / "model"))
    with torch.no_grad():
        scores = torch.softmax(model(x), dim=1)[:, 0].numpy()
    assert roc_auc_score(data.target == 1, scores) >= 0.95


def test_each_site_charged_its_own_budget(deployment: dict) -> None:
    root = deployment["root"]
    card = read_card(root / "model")
    reported = {s["name"]: s["epsilon"] for s in card.federated["site_privacy"]}
    for i in range(SITES):
        store = Store(f"sqlite:///{root / f'store-node{i}.db'}")
        dataset_id = read_header(root / f"site{i}.sealed").dataset_id
        status = ledger.status(store, dataset_id)
        [run] = status.runs
        assert run.state == "completed"
        assert run.epsilon == pytest.approx(reported[f"hospital-node{i}"], abs=1e-3)


def test_unregistered_site_and_wrong_ca_are_refused(deployment: dict) -> None:
    one_error_line(deployment["intruder"], 2, "registered at the server")
    one_error_line(deployment["wrong_ca"], 2, "certificate", "SSL", "TLS")


def test_bad_server_and_site_settings_give_one_line_errors(deployment: dict) -> None:
    root = deployment["root"]
    node = [str(root / f"node{i}" / "node.pub") for i in range(2)]
    junk = root / "junk.pub"
    junk.write_text("ssh-nonsense AAAA\n")
    server = ("federated", "server", "--epsilon", "1", "--out", str(root / "never"))
    for args, phrase in [
        (
            ("--tls", str(root / "nope"), "--site-key", node[0], "--site-key", node[1]),
            "init-server",
        ),
        (("--tls", str(root / "tls"), "--site-key", node[0], "--site-key", str(junk)), "OpenSSH"),
        (("--tls", str(root / "tls"), "--site-key", node[0]), "at least 2 sites"),
        (
            ("--tls", str(root / "tls"), "--site-key", node[0], "--site-key", node[1], "--secagg")
            + ("--aggregator", "median"),
            "cannot be combined",
        ),
    ]:
        one_error_line(run_cli(*server, *args), 2, phrase)
    assert not (root / "never").exists()
    site = (
        "federated",
        "site",
        "--server",
        "localhost:1",
        "--node-key",
        str(root / "node0" / "node.key"),
        "--data",
        str(root / "site0.sealed"),
    )
    one_error_line(
        run_cli(*site, "--ca", str(root / "missing.pem"), "--key", str(root / "keys0")),
        2,
        "CA certificate not found",
    )
    # The wrong key set fails at the site before it connects to anything.
    wrong = run_cli(*site, "--ca", str(root / "tls" / "ca.pem"), "--key", str(root / "keys1"))
    assert wrong.returncode != 0 and len(wrong.stderr.strip().splitlines()) == 1
    assert "Traceback" not in wrong.stderr and "SuperNode" not in wrong.stderr
