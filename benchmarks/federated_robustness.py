"""Robust aggregation against malicious sites: accuracy and AUC of the global model for every
attack, aggregator and fraction of malicious sites, each a Flower simulation with per-site
DP-SGD. Prints one JSON object.

    python benchmarks/federated_robustness.py            # the table in BENCHMARKS.md
    python benchmarks/federated_robustness.py --smoke    # two runs; CI keeps it working

Every run uses its own temporary store (a budget of ε = 1000 per simulated site) and the same
seed, so the sites' data and noise are the same across aggregators. The figures are exact, on
the pooled held-out rows (this script holds the data; the cards carry DP-noised ones).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from securetrain.federated.config import FederatedConfig
from securetrain.federated.simulate import simulate
from securetrain.train import evaluate

AGGREGATORS = ("fedavg", "krum", "median", "trimmed-mean")
ATTACKS = ("label-flip", "sign-flip", "scaling")
FRACTIONS = (0.0, 0.1, 0.2, 0.3)


def combinations(sites: int, fractions: tuple[float, ...], attacks: tuple[str, ...]):  # type: ignore[no-untyped-def]
    for fraction in fractions:
        malicious = round(fraction * sites)
        for attack in attacks if malicious else ("none",):
            yield fraction, malicious, attack


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        data, sites, rounds, epsilon = "builtin:breast-cancer", 5, 1, 4.0
        aggregators, fractions, attacks = ("fedavg", "median"), (0.2,), ("sign-flip",)
    else:
        data, sites, rounds, epsilon = "builtin:synthetic-fraud", 10, 3, 2.0
        aggregators, fractions, attacks = AGGREGATORS, FRACTIONS, ATTACKS
    runs = [
        (f, m, a, agg) for f, m, a in combinations(sites, fractions, attacks) for agg in aggregators
    ]
    rows = []
    with (
        tempfile.TemporaryDirectory() as home,
        Progress(console=Console(stderr=True)) as bar,
    ):
        os.environ["SECURETRAIN_HOME"] = home
        task = bar.add_task("simulations", total=len(runs))
        for i, (fraction, malicious, attack, aggregator) in enumerate(runs):
            start = time.perf_counter()
            result = simulate(
                FederatedConfig(
                    data=data,
                    sites=sites,
                    rounds=rounds,
                    epsilon=epsilon,
                    aggregator=aggregator,
                    attack=attack,
                    malicious=malicious,
                    site_budget=1000.0,
                    seed=0,
                    out=Path(home) / f"run-{i}",
                )
            )
            x = np.concatenate([s.x_test for s in result.sites])
            y = np.concatenate([s.y_test for s in result.sites])
            n_classes = result.card.model.architecture.n_classes
            exact = evaluate(result.model, x, y, n_classes)
            rows.append(
                {
                    "attack": attack,
                    "malicious_fraction": fraction,
                    "malicious_sites": malicious,
                    "aggregator": aggregator,
                    "test_accuracy": exact["test_accuracy"],
                    "test_auc": exact["test_auc"],
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            bar.advance(task)
    print(
        json.dumps(
            {
                "settings": {
                    "data": data,
                    "sites": sites,
                    "rounds": rounds,
                    "epsilon_per_site": epsilon,
                    "partition": "iid",
                    "sign_flip_factor": -5.0,
                    "scaling_factor": 10.0,
                    "update_bound": 1.0,
                },
                "runs": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
