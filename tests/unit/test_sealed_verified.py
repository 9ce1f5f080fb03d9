"""open_sealed decrypts only what verify_sealed returned, and only while the files are unchanged."""

import dataclasses
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from securetrain.crypto import generate_keyset, provider_for_keydir
from securetrain.crypto.keys import fingerprint, load_public_key
from securetrain.crypto.signing import signed_manifest_digest
from securetrain.errors import IntegrityError
from securetrain.sealed import (
    SIGNATURE,
    VerifiedSealed,
    check_key,
    open_sealed,
    read_header,
    seal_table,
    verify_sealed,
)

TABLE = pa.table({"id": list(range(40)), "name": [f"patient-{i}" for i in range(40)]})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("verified")
    keys = generate_keyset(root / "keys")
    provider = provider_for_keydir(keys.root)
    for name in ("A", "B"):  # two valid datasets, same keys, same signer
        seal_table(
            TABLE, root / name, keys=provider, signing_key=keys.signing_key, rows_per_chunk=10
        )
    return root, keys, provider


def _verified_copy(world, tmp_path: Path) -> tuple[Path, VerifiedSealed]:
    root, keys, _ = world
    d = tmp_path / "D"
    shutil.copytree(root / "A", d)
    return d, verify_sealed(d, keys.public_key)


def test_verification_records_what_it_established(world, tmp_path: Path) -> None:
    _, keys, provider = world
    d, verified = _verified_copy(world, tmp_path)
    assert verified.path == d and verified.header.raw == read_header(d).raw
    assert verified.signer == fingerprint(load_public_key(keys.public_key))
    assert verified.manifest_digest == signed_manifest_digest(d, SIGNATURE)
    assert sorted(verified.files) == [f"chunks/0000000{i}.bin" for i in range(4)] + ["header.json"]
    check_key(verified, provider)
    assert open_sealed(verified, keys=provider).equals(TABLE)


def test_open_refuses_anything_but_a_verified_value(world, tmp_path: Path) -> None:
    _, _, provider = world
    d, verified = _verified_copy(world, tmp_path)
    look_alike = SimpleNamespace(
        **{f.name: getattr(verified, f.name) for f in dataclasses.fields(verified)}
    )
    for value in (d, str(d), read_header(d), look_alike):
        with pytest.raises(TypeError, match="verify_sealed"):
            open_sealed(value, keys=provider)
        with pytest.raises(TypeError, match="verify_sealed"):
            check_key(value, provider)


def test_a_verified_value_cannot_be_made_or_altered_by_hand(world, tmp_path: Path) -> None:
    d, verified = _verified_copy(world, tmp_path)
    fields = {f.name: getattr(verified, f.name) for f in dataclasses.fields(verified)}
    with pytest.raises(TypeError, match="only from verify_sealed"):
        VerifiedSealed(**fields)
    with pytest.raises(TypeError, match="only from verify_sealed"):
        dataclasses.replace(verified, files={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.path = tmp_path  # type: ignore[misc]


@pytest.mark.parametrize("replace", ["directory", "header", "chunk"])
def test_a_dataset_replaced_after_verification_is_refused(world, tmp_path: Path, replace) -> None:
    root, _, provider = world
    d, verified = _verified_copy(world, tmp_path)
    if replace == "directory":  # another validly sealed and signed dataset in its place
        shutil.rmtree(d)
        shutil.copytree(root / "B", d)
    elif replace == "header":
        shutil.copy(root / "B" / "header.json", d / "header.json")
    else:
        shutil.copy(root / "B" / "chunks" / "00000002.bin", d / "chunks" / "00000002.bin")
    with pytest.raises(IntegrityError, match="changed after it was verified"):
        open_sealed(verified, keys=provider)
