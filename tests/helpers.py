"""Shared helpers for the tests: run the CLI as a user would, make tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CANARY = "Zebediah-Quux-7731"


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "securetrain", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=600,
    )


def patients_table(n: int = 6000, seed: int = 0, canary_row: int | None = 17) -> pa.Table:
    """A synthetic patient table with numeric, categorical and identifier columns."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    bmi = rng.normal(27, 5, n).clip(15, 45).round(1)
    city = rng.choice(["north", "south", "east"], n).astype(object)
    if canary_row is not None:
        city[canary_row] = CANARY
    smoker = rng.choice(["yes", "no"], n, p=[0.3, 0.7])
    logit = 0.05 * (age - 50) + 0.15 * (bmi - 27) + 1.2 * (smoker == "yes") + 0.4 * (city == "east")
    ill = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pa.table(
        {
            "patient_id": [f"P{100000 + i}" for i in range(n)],
            "age": age,
            "bmi": bmi,
            "city": list(city),
            "smoker": list(smoker),
            "outcome": np.where(ill, "ill", "healthy").tolist(),
        }
    )


def write_csv(table: pa.Table, path: Path) -> Path:
    pacsv.write_csv(table, path)
    return path


def one_error_line(result, code: int, *expected: str) -> None:
    """One line, ``error: ...``, containing one of the expected phrases."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert any(e in lines[0] for e in expected), lines[0]
    assert "Traceback" not in result.stderr
