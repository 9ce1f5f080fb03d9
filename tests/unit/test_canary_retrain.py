"""The canary audit retrains with the audited run's mechanism exactly."""

import numpy as np

from securetrain.attacks import canary
from securetrain.bundle.card import Architecture
from securetrain.engine import DPOptimizer
from securetrain.train import DPPlan, Hyperparameters, loop


def test_the_retrain_divides_by_the_bundles_expected_batch_not_the_rows_with_canaries(
    monkeypatch,
) -> None:
    seen: list[DPOptimizer] = []

    class Recording(DPOptimizer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            seen.append(self)

    monkeypatch.setattr(loop, "DPOptimizer", Recording)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, 60)
    pool_x, pool_y = rng.normal(size=(20, 3)), rng.integers(0, 2, 20)
    # The audited run had 57.3 noisy training rows at q = 0.1: expected batch 5.73.
    dp = DPPlan(
        sample_rate=0.1,
        steps=4,
        noise_multiplier=1.3,
        expected_batch_size=5.73,
        accounting_delta=1e-5,
    )
    audit = canary.run_canary_audit(
        x,
        y,
        pool_x,
        pool_y,
        m=16,
        arch=Architecture(name="logreg", n_features=3, n_classes=2),
        hp=Hyperparameters(model="logreg", epochs=1, batch_size=6, max_grad_norm=0.4, lr=0.1),
        dp=dp,
        delta=1e-5,
        seed=3,
    )
    assert audit.included.sum() > 0  # canaries were added, so len(y) grew past 60
    (opt,) = seen
    assert opt.expected_batch_size == 5.73
    assert (opt.sample_rate, opt.noise_multiplier, opt.max_grad_norm) == (0.1, 1.3, 0.4)
    assert opt.steps == 4
