"""A site runs only the securetrain app it pinned, and only the server holding the Control API
token can submit runs. Real processes on loopback: a SuperLink started as `federated server`
starts it, one site (`federated site`), and a foreign Flower app whose ClientApp would write a
marker file at the site."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path

import httpx
import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.common.serde import fab_to_proto
from flwr.proto.control_pb2 import StartRunRequest
from flwr.supercore.fab import Fab

from securetrain.errors import IntegrityError
from securetrain.federated.pki import ServerFiles
from securetrain.federated.processes import CONNECTION, SuperLink
from securetrain.federated.trust import (
    APP_PYPROJECT,
    app_fab,
    check_fab,
    pinned_fab_hash,
)
from tests.e2e.test_federated_deployment import _finish, _free_port, _ok, _start
from tests.helpers import run_cli

FOREIGN_PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "foreign"
version = "1.0.0"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "intruder"

[tool.flwr.app.components]
serverapp = "foreign_server:app"
clientapp = "foreign_client:app"
"""

FOREIGN_CLIENT = """\
from pathlib import Path

from flwr.clientapp import ClientApp

Path({marker!r}).write_text("imported at the site")
app = ClientApp()


@app.query()
def query(msg, context):
    Path({marker!r}).write_text(str(context.node_config))
    return msg.create_reply(msg.content)
"""

FOREIGN_SERVER = """\
import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    for _ in range(240):
        if grid.get_node_ids():
            break
        time.sleep(0.5)
    messages = [
        Message(RecordDict({{"q": ConfigRecord({{"x": 1}})}}), dst_node_id=n, message_type="query")
        for n in grid.get_node_ids()
    ]
    replies = grid.send_and_receive(messages, timeout=120)
    Path({out!r}).write_text(
        json.dumps([r.error.reason if r.has_error() else "ran" for r in replies])
    )
"""


def test_the_pinned_hash_is_the_app_flwr_run_builds(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    built = build_fab_from_disk(app)
    assert hashlib.sha256(built).hexdigest() == pinned_fab_hash()
    check_fab(built, pinned_fab_hash())
    # One changed byte, or one added file, is another app.
    (app / "extra.py").write_text("")
    for other in (app_fab().replace(b"securetrain", b"securetrair", 1), build_fab_from_disk(app)):
        with pytest.raises(IntegrityError, match=f"pinned \\(FAB sha256 {pinned_fab_hash()}\\)"):
            check_fab(other, pinned_fab_hash())


@pytest.fixture(scope="module")
def foreign_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pinned")
    _ok(run_cli("federated", "init-server", "--dir", str(root / "tls"), "--host", "localhost"))
    _ok(run_cli("federated", "init-site", "--dir", str(root / "node")))
    marker, out = root / "marker.txt", root / "replies.json"
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "pyproject.toml").write_text(FOREIGN_PYPROJECT)
    (foreign / "foreign_client.py").write_text(FOREIGN_CLIENT.format(marker=str(marker)))
    (foreign / "foreign_server.py").write_text(FOREIGN_SERVER.format(out=str(out)))
    fab = build_fab_from_disk(foreign)
    start_run = StartRunRequest(
        fab=fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {}))
    ).SerializeToString()
    port = _free_port()
    work = root / "server"
    work.mkdir()
    link = SuperLink(work, ServerFiles(root / "tls"), "127.0.0.1", port, None)
    site = None
    try:
        link.wait_ready()
        # Submitting the foreign app without the token, or with a wrong one.
        refused = [
            httpx.post(
                f"https://127.0.0.1:{port}/v1/control/start-run",
                content=start_run,
                headers={"content-type": "application/protobuf", **auth},
                verify=str(root / "tls" / "ca.pem"),
                timeout=60,
            ).status_code
            for auth in ({}, {"authorization": f"Bearer {secrets.token_urlsafe(32)}"})
        ]
        link.cli("supernode", "register", str(root / "node" / "node.pub"), CONNECTION)
        # Even a run submitted with the token (a compromised server) runs no foreign code.
        link.cli("run", str(foreign), CONNECTION)
        site = _start(
            "federated",
            "site",
            "--server",
            f"localhost:{port}",
            "--ca",
            str(root / "tls" / "ca.pem"),
            "--node-key",
            str(root / "node" / "node.key"),
            "--data",
            "builtin:breast-cancer",
            "--runtime-port",
            str(_free_port()),
            "--flower-log",
            str(root / "supernode.log"),
            "--timeout",
            "150",
        )
        deadline = time.monotonic() + 150
        while not out.exists() and time.monotonic() < deadline and site.poll() is None:
            link.check_alive()
            time.sleep(0.5)
    finally:
        if site is not None:
            site.terminate()
            _finish(site, timeout=60)
        link.proc.terminate()
        link.proc.wait(timeout=60)
    return {
        "refused": refused,
        "replies": json.loads(out.read_text()) if out.exists() else None,
        "marker": marker,
        "site_log": (root / "supernode.log").read_text(errors="replace"),
    }


def test_control_api_refuses_runs_without_the_token(foreign_run: dict) -> None:
    assert foreign_run["refused"] == [401, 401]


def test_site_refuses_a_foreign_fab_before_running_any_of_it(foreign_run: dict) -> None:
    [reply] = foreign_run["replies"]
    assert "refused a FAB with sha256" in reply and pinned_fab_hash() in reply
    assert "refused a FAB with sha256" in foreign_run["site_log"]
    assert not foreign_run["marker"].exists()
