"""Benchmarks run in a tiny size so they keep working; their real figures are in BENCHMARKS.md."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def run_smoke(script: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_privacy_utility_smoke() -> None:
    rows = run_smoke("privacy_utility.py")["builtin:breast-cancer"]
    assert set(rows) == {"epsilon_1", "no_dp"}
    assert rows["no_dp"]["test_auc"]["mean"] > 0.95
    assert 0.5 < rows["epsilon_1"]["opacus_exact_standardisation_test_auc"]["mean"] <= 1.0


def test_sealed_io_smoke() -> None:
    figures = run_smoke("sealed_io.py")
    assert figures["io"]["rows"] > 0 and figures["io"]["unseal_decrypt_mb_per_s"] > 0
    assert figures["training"]["train_from_sealed_s"] > 0


def test_engine_speed_smoke() -> None:
    figures = run_smoke("engine_speed.py")
    models = {"mlp_64_256_256_2", "cnn_digits_8x8", "cnn_32x32", "transformer_seq32"}
    assert models <= set(figures)
    modes = {
        "non_private",
        "opacus_hooks",
        "opacus_ghost",
        "securetrain_generic",
        "securetrain_fast",
    }
    for model in models:
        assert set(figures[model]["samples_per_s"]) == modes
        assert all(v > 0 for v in figures[model]["samples_per_s"].values())
        assert all(v > 0 for v in figures[model]["peak_memory_mib"].values())


def test_federated_robustness_smoke() -> None:
    runs = run_smoke("federated_robustness.py")["runs"]
    assert [(r["aggregator"], r["attack"], r["malicious_sites"]) for r in runs] == [
        ("fedavg", "sign-flip", 1),
        ("median", "sign-flip", 1),
    ]
    assert runs[1]["test_auc"] > runs[0]["test_auc"]


def test_service_load_smoke() -> None:
    figures = run_smoke("service_load.py")
    assert figures["clients"] == 5 and figures["requests"] > 10
    assert figures["errors"] == 0, figures["error_kinds"]
    assert 0 < figures["latency_ms"]["p50"] <= figures["latency_ms"]["p99"]
