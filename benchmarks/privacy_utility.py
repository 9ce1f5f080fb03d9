"""Privacy vs utility of `securetrain train` defaults, beside a non-private baseline and Opacus.

For each ε, trains R models on builtin datasets with the CLI defaults (fresh random split and
OS-entropy noise each time) and reports test AUC / accuracy (mean, min, max). As a reference,
Opacus at the same ε, hyperparameters and split, but with exact (non-private) standardisation,
which is what a plain Opacus pipeline releases. Prints one JSON object.

    python benchmarks/privacy_utility.py                # the figures in BENCHMARKS.md
    python benchmarks/privacy_utility.py --smoke        # seconds; CI keeps it working
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from securetrain import TrainConfig, train
from securetrain.data import load_dataset, split_mask


def opacus_reference(dataset: str, split_seed: str, epsilon: float, hp: dict) -> float:
    """Opacus DP-SGD with exact standardisation (its usual pipeline), same split and settings."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    data = load_dataset(dataset)
    test = split_mask(data, seed=split_seed)
    x = np.stack([data.features.column(n).to_numpy() for n in data.features.column_names], 1)
    classes = data.schema.classes
    y = np.array([classes.index(v) for v in data.labels])
    mu, sd = x[~test].mean(0), x[~test].std(0) + 1e-12
    xs = ((x - mu) / sd).astype(np.float32)
    train_ds = TensorDataset(torch.from_numpy(xs[~test]), torch.from_numpy(y[~test]))
    model = nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=0.9)
    loader = DataLoader(train_ds, batch_size=hp["batch_size"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, loader = PrivacyEngine(accountant="prv").make_private_with_epsilon(
            module=model,
            optimizer=opt,
            data_loader=loader,
            target_epsilon=epsilon,
            target_delta=1e-5,
            epochs=hp["epochs"],
            max_grad_norm=hp["max_grad_norm"],
        )
        for _ in range(hp["epochs"]):
            for xb, yb in loader:
                if len(xb) == 0:
                    continue
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
    with torch.no_grad():
        probs = model(torch.from_numpy(xs[test])).softmax(1).numpy()
    return float(roc_auc_score(y[test], probs[:, 1]))


def summarise(values: list[float]) -> dict[str, float]:
    a = np.array(values, dtype=float)
    return {
        "mean": round(float(a.mean()), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="one tiny run, for CI")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    reps = 1 if args.smoke else args.reps
    epsilons = [1.0] if args.smoke else [0.5, 1.0, 2.0, 4.0, 8.0]
    datasets = (
        ["builtin:breast-cancer"]
        if args.smoke
        else ["builtin:breast-cancer", "builtin:synthetic-fraud"]
    )
    results: dict = {
        "settings": {"reps": reps, "epsilons": epsilons, "torch_threads": torch.get_num_threads()}
    }
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in datasets:
            rows = {}
            for eps in [*epsilons, None]:
                aucs, accs, opacus, seconds = [], [], [], []
                for _ in range(reps):
                    out = Path(tmp) / f"{len(list(Path(tmp).iterdir()))}"
                    cfg = TrainConfig(data=dataset, out=out, epsilon=eps, no_dp=eps is None)
                    if args.smoke:
                        cfg.epochs = 1
                    t = time.perf_counter()
                    result = train(cfg)
                    seconds.append(time.perf_counter() - t)
                    aucs.append(result.card.metrics.test_auc)
                    accs.append(result.card.metrics.test_accuracy)
                    if eps is not None and dataset == "builtin:breast-cancer" and eps == 1.0:
                        opacus.append(
                            opacus_reference(
                                dataset,
                                result.card.data.split.seed,
                                eps,
                                result.card.training.model_dump(),
                            )
                        )
                key = "no_dp" if eps is None else f"epsilon_{eps:g}"
                rows[key] = {
                    "test_auc": summarise(aucs),
                    "test_accuracy": summarise(accs),
                    "seconds_per_run": round(float(np.median(seconds)), 2),
                }
                if opacus:
                    rows[key]["opacus_exact_standardisation_test_auc"] = summarise(opacus)
            results[dataset] = rows
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
