"""Importing securetrain's federated modules changes no environment variable; Flower's telemetry
is off, and Ray's accelerator override off by default, only in what securetrain starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from securetrain.federated.environment import (
    RAY_OVERRIDE,
    TELEMETRY,
    flower_environ,
    flower_environment,
)
from securetrain.federated.processes import flower_env

MODULES = [
    "apps",
    "card",
    "components",
    "config",
    "deployment",
    "environment",
    "pki",
    "processes",
    "simulate",
    "sites",
    "strategies",
    "trust",
]

# What the federated modules import from below them and from Flower, imported first: some of
# those set variables of their own (gRPC's verbosity, sigstore's telemetry, OpenMP's options).
BELOW = ["flwr.client", "flwr.server", "securetrain.train", "securetrain.store"]

IMPORT_ALL = f"""
import json, os
for name in {BELOW!r}:
    __import__(name)
before = dict(os.environ)
for name in {MODULES!r}:
    __import__("securetrain.federated." + name)
import flwr.supercore.telemetry as telemetry
print(json.dumps({{"before": before, "after": dict(os.environ),
                  "telemetry": telemetry.FLWR_TELEMETRY_ENABLED}}))
"""


def test_importing_the_federated_package_leaves_the_environment_alone() -> None:
    kept = ("PATH", "HOME", "PYTHONPATH")
    clean = {name: os.environ[name] for name in kept if name in os.environ}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, env=clean, timeout=120
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["after"] == seen["before"]
    assert TELEMETRY not in seen["after"] and RAY_OVERRIDE not in seen["after"]
    assert seen["telemetry"] == "1"  # Flower's own default, untouched by the import


def test_flower_environ_forces_telemetry_off_and_keeps_a_chosen_ray_override() -> None:
    assert flower_environ({"A": "x"}) == {"A": "x", TELEMETRY: "0", RAY_OVERRIDE: "0"}
    chosen = flower_environ({TELEMETRY: "1", RAY_OVERRIDE: "1"})
    assert chosen == {TELEMETRY: "0", RAY_OVERRIDE: "1"}


def test_flower_processes_get_the_environment(tmp_path: Path) -> None:
    env = flower_env(tmp_path)
    assert env[TELEMETRY] == "0" and env[RAY_OVERRIDE] in ("0", os.environ.get(RAY_OVERRIDE))
    assert env["FLWR_HOME"] == str(tmp_path)


def test_flower_environment_is_set_while_flower_runs_and_restored_after(monkeypatch) -> None:
    import flwr.supercore.telemetry as telemetry

    monkeypatch.setenv(TELEMETRY, "1")
    monkeypatch.delenv(RAY_OVERRIDE, raising=False)
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "1")
    with flower_environment():
        assert os.environ[TELEMETRY] == "0" and os.environ[RAY_OVERRIDE] == "0"
        assert telemetry.FLWR_TELEMETRY_ENABLED == "0"
    assert os.environ[TELEMETRY] == "1" and RAY_OVERRIDE not in os.environ
