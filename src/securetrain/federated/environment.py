"""The environment of every Flower and Ray process securetrain starts: Flower's telemetry off,
and Ray's accelerator override on zero GPUs off (the default that Ray will adopt, without its
warning). Nothing is set at import: the simulation sets it around its run, and the SuperLink and
SuperNode processes get it in their own environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

TELEMETRY = "FLWR_TELEMETRY_ENABLED"
RAY_OVERRIDE = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"


def flower_environ(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with Flower's telemetry off; Ray's override off unless ``base`` sets it."""
    return {RAY_OVERRIDE: "0", **base, TELEMETRY: "0"}


@contextmanager
def flower_environment() -> Iterator[None]:
    """This process's environment as :func:`flower_environ` has it while Flower and Ray run in
    it (Ray's workers inherit it), restored afterwards. Flower reads its telemetry switch when it
    is first imported, so a Flower imported earlier is switched off too."""
    saved = {name: os.environ.get(name) for name in (TELEMETRY, RAY_OVERRIDE)}
    os.environ.update(flower_environ(os.environ))
    telemetry: Any = sys.modules.get("flwr.supercore.telemetry")
    if telemetry is not None:
        telemetry.FLWR_TELEMETRY_ENABLED = "0"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
