"""Benchmarks run in a tiny size so they keep working; their real figures are in BENCHMARKS.md."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_privacy_utility_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "privacy_utility.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    rows = figures["builtin:breast-cancer"]
    assert set(rows) == {"epsilon_1", "no_dp"}
    assert rows["no_dp"]["test_auc"]["mean"] > 0.95
    assert 0.5 < rows["epsilon_1"]["opacus_exact_standardisation_test_auc"]["mean"] <= 1.0


def test_sealed_io_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sealed_io.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["io"]["rows"] > 0 and figures["io"]["unseal_decrypt_mb_per_s"] > 0
    assert figures["training"]["train_from_sealed_s"] > 0


def test_engine_speed_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "engine_speed.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for name in ("mlp_64_256_256_2", "cnn_digits_8x8"):
        assert set(figures[name]["samples_per_s"]) == {
            "non_private",
            "opacus_hooks",
            "securetrain_generic",
            "securetrain_fast",
        }
        assert all(v > 0 for v in figures[name]["samples_per_s"].values())
