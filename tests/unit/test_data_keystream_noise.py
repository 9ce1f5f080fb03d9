"""The data package's DP noise comes from the AES-256-CTR keystream, checked against the cipher
itself; numpy's generators are refused."""

import hashlib
import math

import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from securetrain.crypto.keystream import make_keystream
from securetrain.data import fit_preprocessor, from_table
from securetrain.engine import make_generator
from securetrain.errors import ConfigError
from securetrain.privacy import noisy_counts


def _reference_gaussians(key: bytes, n: int) -> np.ndarray:
    """Box-Muller on the top 53 bits of the keystream's 64-bit words, written out plainly."""
    pairs = -(-n // 2)
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(16 * pairs))
    u = (np.frombuffer(stream, dtype="<u8") >> 11).astype(np.float64) / 2.0**53
    radius = np.sqrt(-2.0 * np.log(1.0 - u[:pairs]))
    angle = 2.0 * math.pi * u[pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]


def test_noisy_counts_are_the_counts_plus_the_keystream_gaussians() -> None:
    key = hashlib.sha256(b"securetrain.engine.rng/v1:7/preprocessing").digest()
    rng = make_keystream(7, stream="preprocessing")
    assert rng.secure is False and "not secure" in rng.description
    noisy = noisy_counts(1000, 400, 2.5, rng).value
    assert noisy == pytest.approx(np.array([1000.0, 400.0]) + 2.5 * _reference_gaussians(key, 2))


def test_a_named_stream_never_repeats_the_training_stream() -> None:
    engine, _ = make_generator(7)
    assert not np.array_equal(make_keystream(7, stream="metrics").words(8), engine.words(8))
    assert not np.array_equal(
        make_keystream(7, stream="metrics").words(8),
        make_keystream(7, stream="preprocessing").words(8),
    )


def test_unseeded_keystreams_are_secure_and_independent() -> None:
    a, b = make_keystream(), make_keystream()
    assert a.secure and b.secure
    assert not np.array_equal(a.words(4), b.words(4))


def test_keystream_gaussians_are_standard_normal() -> None:
    z = make_keystream(3, stream="test").gaussian(1.0, 20_001)
    assert z.shape == (20_001,) and z.dtype == np.float64
    assert stats.kstest(z, "norm").pvalue > 1e-6


def test_numpy_generators_are_refused() -> None:
    with pytest.raises(ConfigError, match="Generator"):
        noisy_counts(10, 5, 1.0, np.random.default_rng(0))
    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": ["a", "b", "a", "b"]})
    data = from_table(table, label="y", source="t", sha256="")
    with pytest.raises(ConfigError, match="make_keystream"):
        fit_preprocessor(
            data, n_test=0, sigma=1.0, selection_delta=1e-6, rng=np.random.default_rng(0)
        )
