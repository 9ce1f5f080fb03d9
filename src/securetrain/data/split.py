"""Train/test split by a keyed hash of each record's content.

Each record goes to the test split when HMAC-SHA256(seed, record) falls below the test
fraction. The decision depends on that record alone, so adding or removing one person changes
the training split by at most that person: the DP guarantee of training holds for the whole
table even though the seed is published. Every class is split at the same rate in
expectation (stratified in expectation); identical records land in the same split. Values are
hashed as text in one canonical form (:func:`securetrain.data.values.text`), so a record's
hash does not depend on the type that the other records give a column.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import numpy as np

from securetrain.data.dataset import TabularData
from securetrain.data.values import texts
from securetrain.errors import ConfigError

TEST_FRACTION = 0.3


def split_mask(data: TabularData, *, seed: str, test_fraction: float = TEST_FRACTION) -> np.ndarray:
    """Boolean mask of the rows that go to the test split."""
    if not (0 < test_fraction < 1):
        raise ConfigError(f"Test fraction must be in (0, 1). Found {test_fraction}.")
    key = seed.encode()
    columns = [texts(data.features.column(n)) for n in data.features.column_names]
    cut = int(test_fraction * 2**64)
    mask = np.zeros(data.n_rows, dtype=bool)
    for i in range(data.n_rows):
        record = json.dumps([c[i] for c in columns] + [data.labels[i]]).encode()
        digest = hmac.new(key, record, hashlib.sha256).digest()
        mask[i] = int.from_bytes(digest[:8], "big") < cut
    return mask
