"""Statistical tests of the noise and of Poisson sampling. Each states its false-failure rate."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from securetrain.engine import DPOptimizer, PoissonBatchSampler, make_generator

ALPHA = 1e-6  # false-failure rate of each statistical assertion below


def _noise_only_step(
    sigma: float, clip: float, expected_batch: float, seed: int | None
) -> torch.Tensor:
    """One DP-SGD step on an empty batch: the gradient is pure noise / expected batch size."""
    model = nn.Linear(200, 100)
    gen, _ = make_generator(seed)
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        module=model,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=expected_batch,
        sample_rate=0.1,
        generator=gen,
        secure_rng=seed is None,
    )
    opt.zero_grad()
    model(torch.zeros(0, 200)).sum().backward()
    opt.step()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).double()


@pytest.mark.parametrize(
    ("sigma", "clip", "batch"), [(1.0, 1.0, 1.0), (2.5, 0.3, 7.0), (0.7, 4.0, 50.0)]
)
def test_noise_has_the_right_standard_deviation(sigma: float, clip: float, batch: float) -> None:
    g = _noise_only_step(sigma, clip, batch, seed=None).numpy()
    expected_sd = sigma * clip / batch
    n = g.size
    # Variance: (n-1) s^2 / sd^2 ~ chi2(n-1); two-sided test at ALPHA.
    statistic = (n - 1) * g.var(ddof=1) / expected_sd**2
    lo, hi = stats.chi2.ppf(ALPHA / 2, n - 1), stats.chi2.isf(ALPHA / 2, n - 1)
    assert lo < statistic < hi, f"sample sd {g.std():.5g} vs expected {expected_sd:.5g}"
    # Mean zero: z-test at ALPHA.
    z = g.mean() / (expected_sd / np.sqrt(n))
    assert abs(z) < stats.norm.isf(ALPHA / 2)
    # Gaussian shape: Kolmogorov-Smirnov against N(0, sd^2) at ALPHA.
    assert stats.kstest(g / expected_sd, "norm").pvalue > ALPHA


def test_noise_is_not_repeatable_without_a_seed_and_repeatable_with_one() -> None:
    a, b = _noise_only_step(1.0, 1.0, 1.0, None), _noise_only_step(1.0, 1.0, 1.0, None)
    assert not torch.equal(a, b)
    c, d = _noise_only_step(1.0, 1.0, 1.0, 42), _noise_only_step(1.0, 1.0, 1.0, 42)
    assert torch.equal(c, d)


def test_generator_records_whether_it_is_secure() -> None:
    assert make_generator(None)[1] is True
    assert make_generator(5)[1] is False


def test_poisson_batch_sizes_follow_binomial() -> None:
    n, q, steps = 60, 0.15, 20_000
    gen, _ = make_generator(None)
    sampler = PoissonBatchSampler(n, sample_rate=q, steps=steps, generator=gen)
    sizes = np.array([len(b) for b in sampler])
    # Chi-square goodness of fit; the tails are merged so every expected count is at least 5.
    expected = stats.binom.pmf(np.arange(n + 1), n, q) * steps
    observed = np.bincount(sizes, minlength=n + 1).astype(float)
    big = np.flatnonzero(expected >= 5)
    lo, hi = big.min(), big.max()
    exp_bins = np.r_[expected[:lo].sum(), expected[lo : hi + 1], expected[hi + 1 :].sum()]
    obs_bins = np.r_[observed[:lo].sum(), observed[lo : hi + 1], observed[hi + 1 :].sum()]
    assert stats.chisquare(obs_bins, exp_bins * steps / exp_bins.sum()).pvalue > ALPHA


def test_every_record_is_included_independently_at_rate_q() -> None:
    n, q, steps = 40, 0.3, 5_000
    gen, _ = make_generator(None)
    counts = np.zeros(n)
    for batch in PoissonBatchSampler(n, sample_rate=q, steps=steps, generator=gen):
        counts[batch] += 1
    # Each record's inclusion count is Binomial(steps, q); Bonferroni over records.
    lo = stats.binom.ppf(ALPHA / (2 * n), steps, q)
    hi = stats.binom.isf(ALPHA / (2 * n), steps, q)
    assert ((counts >= lo) & (counts <= hi)).all()


def test_small_rate_gives_empty_batches() -> None:
    gen, _ = make_generator(None)
    sizes = [len(b) for b in PoissonBatchSampler(10, sample_rate=0.01, steps=2_000, generator=gen)]
    # P(no empty batch in 2000 steps) = (1 - 0.99^10)^2000, far below ALPHA.
    assert 0 in sizes
