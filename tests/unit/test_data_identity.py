"""The card names its data by a keyed commitment, the sealed manifest, or a public digest."""

import hashlib
import json
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from securetrain.data import load_builtin, load_dataset
from securetrain.data.identity import DataIdentity, check, key_path
from securetrain.errors import ConfigError, DataError
from securetrain.train import TrainConfig, train
from tests.helpers import write_csv


def _csv(path: Path, n: int = 300, change_row: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    if change_row is not None:
        x[change_row, 0] += 1.0
    y = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
    return write_csv(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y.tolist()}), path)


def test_a_private_file_is_committed_under_a_key_written_owner_only(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "d.csv")
    data = load_dataset(str(csv), label="y")
    bundle = tmp_path / "bundle"
    identity = data.commit(bundle)
    key = key_path(bundle)
    assert key == tmp_path / "bundle.data-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert identity.kind == "hmac-sha256"
    assert identity.value != hashlib.sha256(csv.read_bytes()).hexdigest()
    check(identity, load_dataset(str(csv), label="y"), key=key)
    one_row = load_dataset(str(_csv(tmp_path / "e.csv", change_row=5)), label="y")
    with pytest.raises(DataError, match="not what the bundle was trained on"):
        check(identity, one_row, key=key)
    with pytest.raises(ConfigError, match="give `data_key`"):
        check(identity, data, key=tmp_path / "missing")
    (tmp_path / "short").write_text("abcd\n")
    with pytest.raises(ConfigError, match="is not a data key"):
        check(identity, data, key=tmp_path / "short")
    again = data.commit(bundle)  # a fresh key each time: commitments of one file differ
    assert again.value != identity.value
    with pytest.raises(DataError, match="not what the bundle was trained on"):
        check(identity, data, key=key)


def test_public_data_carries_its_plain_digest(tmp_path: Path) -> None:
    data = load_builtin("builtin:digits")
    identity = data.commit(tmp_path / "b")
    assert (identity.kind, identity.value) == ("public-sha256", data.sha256)
    assert not key_path(tmp_path / "b").exists()
    check(identity, load_builtin("builtin:digits"), key=tmp_path / "unused")
    with pytest.raises(DataError, match="not what the bundle was trained on"):
        check(identity, load_builtin("builtin:breast-cancer"), key=tmp_path / "unused")


def test_the_card_of_a_csv_run_holds_no_hash_of_the_file(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "d.csv", n=400)
    out = tmp_path / "model"
    train(
        TrainConfig(data=str(csv), label="y", classes=["no", "yes"], epsilon=1.0, epochs=1, out=out)
    )
    text = (out / "model_card.json").read_text()
    assert hashlib.sha256(csv.read_bytes()).hexdigest() not in text.lower()
    identity = DataIdentity(**json.loads(text)["data"]["identity"])
    assert identity.kind == "hmac-sha256"
    check(identity, load_dataset(str(csv), label="y"), key=key_path(out))
