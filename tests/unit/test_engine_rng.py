"""The sampling and noise generator: an AES-256-CTR keystream, checked against the cipher itself,
its statistics, its saved state, and the exactness of small Poisson rates."""

import hashlib
import math

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from securetrain.engine import PoissonBatchSampler, make_generator
from securetrain.engine.noise import KeystreamGenerator, gaussian_noise
from securetrain.errors import ConfigError

ALPHA = 1e-6  # false-failure rate of each statistical assertion below


def _keystream(key: bytes, first_block: int, blocks: int) -> bytes:
    counter = first_block.to_bytes(16, "big")
    return Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor().update(bytes(16 * blocks))


def _words(key: bytes, first_block: int, n: int) -> np.ndarray:
    return np.frombuffer(_keystream(key, first_block, -(-n // 2)), dtype="<u8")[:n]


def test_seeded_stream_is_the_aes_256_ctr_keystream_of_the_derived_key() -> None:
    key = hashlib.sha256(b"securetrain.engine.rng/v1:" + b"7").digest()
    gen, secure = make_generator(7)
    assert secure is False
    assert np.array_equal(gen.words(5), _words(key, 0, 5))
    # Five words use three blocks; the next draw starts at block 3.
    assert np.array_equal(gen.words(4), _words(key, 3, 4))
    u = gen.uniform(6)
    assert u.dtype == torch.float64
    assert torch.equal(u, torch.tensor((_words(key, 5, 6) >> 11).astype(np.float64) / 2.0**53))


def test_same_seed_same_stream_and_other_seeds_or_no_seed_differ() -> None:
    a, b, c = make_generator(11)[0], make_generator(11)[0], make_generator(12)[0]
    assert np.array_equal(a.words(1000), b.words(1000))
    assert not np.array_equal(make_generator(11)[0].words(1000), c.words(1000))
    d, e = make_generator(None)[0], make_generator(None)[0]
    assert not np.array_equal(d.words(1000), e.words(1000))


def test_gaussians_are_box_muller_in_float64_of_the_keystream() -> None:
    key = hashlib.sha256(b"securetrain.engine.rng/v1:3").digest()
    gen = make_generator(3)[0]
    z = gen.normal((7,), 2.5, torch.float64)
    u = (_words(key, 0, 8) >> 11).astype(np.float64) / 2.0**53
    radius = 2.5 * np.sqrt(-2.0 * np.log1p(-u[:4]))
    expected = np.r_[radius * np.cos(2 * np.pi * u[4:]), radius * np.sin(2 * np.pi * u[4:])][:7]
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-13, atol=1e-13)
    state = gen.get_state()
    wide = gen.normal((3, 5), 0.7, torch.float64)
    gen.set_state(state)
    narrow = gaussian_noise(torch.zeros(3, 5, dtype=torch.float32), 0.7, gen)
    assert narrow.dtype == torch.float32 and narrow.shape == (3, 5)
    assert torch.equal(narrow, wide.to(torch.float32))


def test_a_million_gaussians_have_mean_zero_the_right_variance_and_gaussian_shape() -> None:
    sd = 1.7
    g = make_generator(2024)[0].normal((1_000_000,), sd, torch.float64).numpy()
    n = g.size
    z = g.mean() / (sd / math.sqrt(n))
    assert abs(z) < stats.norm.isf(ALPHA / 2)
    statistic = (n - 1) * g.var(ddof=1) / sd**2
    assert stats.chi2.ppf(ALPHA / 2, n - 1) < statistic < stats.chi2.isf(ALPHA / 2, n - 1)
    assert stats.kstest(g / sd, "norm").pvalue > ALPHA


def test_state_round_trip_continues_the_same_stream_in_a_fresh_generator() -> None:
    for seed in (None, 5):
        gen = make_generator(seed)[0]
        gen.words(3)
        state = gen.get_state()
        first = gen.normal((101,), 1.0, torch.float32)
        mask = gen.bernoulli(500, 0.3)
        fresh = make_generator(None if seed is not None else 9)[0]
        fresh.set_state(state)
        assert torch.equal(fresh.normal((101,), 1.0, torch.float32), first)
        assert torch.equal(fresh.bernoulli(500, 0.3), mask)
        assert fresh.secure is (seed is None) and fresh.description == gen.description


def test_the_secure_default_is_the_keystream_keyed_from_os_entropy_not_torch() -> None:
    gen, secure = make_generator(None)
    assert isinstance(gen, KeystreamGenerator) and not isinstance(gen, torch.Generator)
    assert secure and gen.secure
    assert gen.description == "AES-256-CTR keystream keyed from os.urandom"
    assert make_generator(42)[0].description == (
        "AES-256-CTR keystream keyed by SHA-256 of seed 42 (not secure)"
    )
    with pytest.raises(ConfigError, match="not an AES-256-CTR keystream state. Found 5056 bytes"):
        gen.set_state(torch.Generator().get_state())


def test_torch_generators_and_misdescribed_generators_are_refused() -> None:
    with pytest.raises(
        ConfigError, match="need a generator from .*make_generator. Found Generator"
    ):
        PoissonBatchSampler(10, sample_rate=0.5, steps=1, generator=torch.Generator())
    from torch import nn

    from securetrain.engine import DPOptimizer

    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"secure_rng=True does not describe .*seed 1 \(not"):
        DPOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            module=model,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=1.0,
            sample_rate=0.5,
            generator=make_generator(1)[0],
            secure_rng=True,
        )


def test_poisson_batches_are_keystream_words_below_the_64_bit_threshold() -> None:
    key = hashlib.sha256(b"securetrain.engine.rng/v1:8").digest()
    n, q, steps = 37, 0.2, 6
    batches = list(
        PoissonBatchSampler(n, sample_rate=q, steps=steps, generator=make_generator(8)[0])
    )
    threshold = np.uint64(math.floor(q * 2.0**64))
    block = 0
    for batch in batches:
        words = _words(key, block, n)
        block += -(-n // 2)
        assert batch == np.flatnonzero(words < threshold).tolist()


@pytest.mark.parametrize("q", [1e-7, 6e-8, 3.3e-5, 2.0**-30, 0.01, 0.5, 1 - 2.0**-53])
def test_small_rates_are_exact_to_2_to_the_minus_64(q: float, monkeypatch) -> None:
    t = math.floor(q * 2.0**64)
    # The inclusion probability is t / 2^64: never above q, and within 1e-12 of it relatively.
    assert t / 2.0**64 <= q and (q - t / 2.0**64) / q < 1e-12
    gen = make_generator(None)[0]
    monkeypatch.setattr(gen, "words", lambda n: np.array([0, t - 1, t, t + 1, 2**64 - 1], "<u8"))
    assert gen.bernoulli(5, q).tolist() == [True, True, False, False, False]
    if q == 1e-7:
        # float32 uniforms (torch.rand) live on a 2^-24 grid, where q = 1e-7 becomes 2^-23.
        assert torch.equal((torch.rand(10_000) * 2**24).frac(), torch.zeros(10_000))
        assert math.ceil(q * 2**24) / 2**24 == 2.0**-23


def _dp_run(steps: int, state: dict) -> dict:
    """A tiny DP-SGD loop from a saved generator state (and model and optimizer, if saved)."""
    from torch import nn

    from securetrain.engine import DPOptimizer

    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    model = nn.Linear(5, 3)
    base = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    gen = make_generator(None)[0]
    gen.set_state(state["rng"])
    if "model" in state:
        model.load_state_dict(state["model"])
        base.load_state_dict(state["optimizer"])
    opt = DPOptimizer(
        base,
        module=model,
        noise_multiplier=1.1,
        max_grad_norm=0.5,
        expected_batch_size=8.0,
        sample_rate=0.125,
        generator=gen,
        secure_rng=True,
    )
    for batch in PoissonBatchSampler(64, sample_rate=0.125, steps=steps, generator=gen):
        opt.zero_grad()
        idx = torch.tensor(batch, dtype=torch.long)
        opt.backward(nn.functional.cross_entropy(model(x[idx]), y[idx]))
        opt.step()
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": base.state_dict(),
        "rng": gen.get_state().clone(),
    }


def test_a_run_resumed_from_the_saved_generator_state_is_bit_identical() -> None:
    start = {"rng": make_generator(None)[0].get_state()}
    whole = _dp_run(11, start)
    resumed = _dp_run(5, _dp_run(6, start))
    for name, value in whole["model"].items():
        assert torch.equal(resumed["model"][name], value)
    assert torch.equal(resumed["rng"], whole["rng"])
    other = _dp_run(11, {"rng": make_generator(None)[0].get_state()})
    assert not torch.equal(other["model"]["weight"], whole["model"]["weight"])


def test_the_card_says_which_generator_drew_the_noise(tmp_path) -> None:
    from securetrain import TrainConfig, train

    config = TrainConfig(data="builtin:breast-cancer", epsilon=1.0, epochs=1, out=tmp_path / "b")
    privacy = train(config).card.privacy
    assert privacy.secure_rng is True
    assert privacy.rng == "AES-256-CTR keystream keyed from os.urandom"
