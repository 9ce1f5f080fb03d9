"""Tampering with a sealed dataset, as property tests over thousands of random mutations.

Every mutation must be caught, and none may yield plaintext: verifying the mutated dataset
must raise; and unless only the signature file was touched, opening what was verified before
the mutation must raise, and so must decryption alone (the right key, the chunks' own
authentication, no signature or manifest check).
"""

import base64
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securetrain.crypto import generate_keyset, provider_for_keydir
from securetrain.errors import SecurityError
from securetrain.sealed import open_sealed, read_header, seal_table, verify_sealed
from securetrain.sealed.reader import _data_key, _decrypt_chunks

CHUNKS = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tamper")
    keys = generate_keyset(root / "keys")
    provider = provider_for_keydir(keys.root)
    table = pa.table({"id": list(range(100)), "name": [f"patient-{i}" for i in range(100)]})
    for name in ("A", "B"):  # two datasets sealed with the same master key
        seal_table(
            table,
            root / name,
            keys=provider,
            signing_key=keys.signing_key,
            label="id",
            rows_per_chunk=100 // CHUNKS,
        )
    shutil.copytree(root / "A", root / "C")
    return root, keys, provider, verify_sealed(root / "C", keys.public_key)


def _chunks(d: Path) -> list[Path]:
    return sorted((d / "chunks").iterdir())


def flip_byte(d: Path, data: st.DataObject) -> bool:
    files = sorted(p for p in d.rglob("*") if p.is_file())
    f = data.draw(st.sampled_from(files))
    content = bytearray(f.read_bytes())
    i = data.draw(st.integers(0, len(content) - 1))
    content[i] ^= data.draw(st.integers(1, 255))
    f.write_bytes(bytes(content))
    return f.name == "dataset.sig"


def swap_chunks(d: Path, data: st.DataObject) -> bool:
    i, j = data.draw(st.lists(st.integers(0, CHUNKS - 1), min_size=2, max_size=2, unique=True))
    a, b = _chunks(d)[i], _chunks(d)[j]
    ab, bb = a.read_bytes(), b.read_bytes()
    a.write_bytes(bb)
    b.write_bytes(ab)
    return False


def delete_chunk(d: Path, data: st.DataObject) -> bool:
    chunks = _chunks(d)
    i = data.draw(st.integers(0, CHUNKS - 1))
    chunks[i].unlink()
    if data.draw(st.booleans()):  # close the gap so the names look contiguous
        for c in chunks[i + 1 :]:
            c.rename(c.with_name(f"{int(c.stem) - 1:08d}.bin"))
    return False


def duplicate_chunk(d: Path, data: st.DataObject) -> bool:
    chunks = _chunks(d)
    i = data.draw(st.integers(0, CHUNKS - 1))
    if data.draw(st.booleans()):
        j = data.draw(st.integers(0, CHUNKS - 1).filter(lambda j: j != i))
        chunks[j].write_bytes(chunks[i].read_bytes())
    else:
        (d / "chunks" / f"{CHUNKS:08d}.bin").write_bytes(chunks[i].read_bytes())
    return False


def truncate(d: Path, data: st.DataObject) -> bool:
    files = sorted(p for p in d.rglob("*") if p.is_file())
    f = data.draw(st.sampled_from(files))
    content = f.read_bytes()
    f.write_bytes(content[: data.draw(st.integers(0, len(content) - 1))])
    return f.name == "dataset.sig"


def drop_last_chunks(d: Path, data: st.DataObject) -> bool:
    """Truncation at chunk granularity, with the header's chunk and row counts edited to match."""
    k = data.draw(st.integers(1, CHUNKS - 1))
    for c in _chunks(d)[-k:]:
        c.unlink()
    header = json.loads((d / "header.json").read_text())
    header["chunking"]["chunks"] = CHUNKS - k
    header["rows"] = (CHUNKS - k) * (100 // CHUNKS)
    (d / "header.json").write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
    return False


def edit_header(d: Path, data: st.DataObject) -> bool:
    header = json.loads((d / "header.json").read_text())
    field = data.draw(
        st.sampled_from(["rows", "label", "dataset_id", "schema", "chunking", "signer", "source"])
    )
    if field == "rows":
        header["rows"] = data.draw(st.integers(0, 10**6).filter(lambda r: r != 100))
    elif field == "label":
        header["label"] = "name"
    elif field == "dataset_id":
        header["dataset_id"] = "0" * 32
    elif field == "schema":
        header["schema"][0]["name"] = "renamed"
    elif field == "chunking":
        header["chunking"]["rows_per_chunk"] += 1
    elif field == "signer":
        header["signer"] = "sha256:" + "ab" * 32
    else:
        header["source"] = "elsewhere.csv"
    (d / "header.json").write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
    return False


def edit_manifest(d: Path, data: st.DataObject) -> bool:
    """Change a file digest inside the signed manifest (the DSSE payload), keeping it well formed."""
    sig = json.loads((d / "dataset.sig").read_text())
    payload = json.loads(base64.b64decode(sig["dsseEnvelope"]["payload"]))
    resources = payload["predicate"]["resources"]
    r = data.draw(st.sampled_from(resources))
    r["digest"] = ("0" if r["digest"][0] != "0" else "1") + r["digest"][1:]
    sig["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    (d / "dataset.sig").write_text(json.dumps(sig))
    return True


def splice_from_other(d: Path, data: st.DataObject, other: Path) -> bool:
    i = data.draw(st.integers(0, CHUNKS - 1))
    j = data.draw(st.integers(0, CHUNKS - 1))
    _chunks(d)[i].write_bytes(_chunks(other)[j].read_bytes())
    return False


def swap_header_from_other(d: Path, data: st.DataObject, other: Path) -> bool:
    shutil.copy(other / "header.json", d / "header.json")
    return False


MUTATIONS = [
    flip_byte,
    swap_chunks,
    delete_chunk,
    duplicate_chunk,
    truncate,
    drop_last_chunks,
    edit_header,
    edit_manifest,
]
SPLICES = [splice_from_other, swap_header_from_other]


def _decrypt_unverified(d: Path, provider) -> pa.Table:
    header = read_header(d)
    blobs = [p.read_bytes() for p in _chunks(d)] if (d / "chunks").is_dir() else []
    return _decrypt_chunks(d, header, _data_key(d, header, provider), blobs)


def _check_caught(d: Path, verified, keys, provider, only_signature: bool) -> None:
    with pytest.raises(SecurityError):
        open_sealed(verify_sealed(d, keys.public_key), keys=provider)
    if not only_signature:
        with pytest.raises(SecurityError):
            open_sealed(verified, keys=provider)
        with pytest.raises(SecurityError):
            _decrypt_unverified(d, provider)


@settings(
    max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), index=st.integers(0, len(MUTATIONS) + len(SPLICES) - 1))
def test_every_mutation_is_detected_and_yields_no_plaintext(world, data, index) -> None:
    root, keys, provider, verified = world
    d = root / "C"  # verified once, then restored to A's files before each mutation
    shutil.rmtree(d)
    shutil.copytree(root / "A", d)
    if index < len(MUTATIONS):
        only_signature = MUTATIONS[index](d, data)
    else:
        only_signature = SPLICES[index - len(MUTATIONS)](d, data, root / "B")
    _check_caught(d, verified, keys, provider, only_signature)


def test_untouched_copy_still_verifies_and_opens(world) -> None:
    root, keys, provider, _ = world
    assert open_sealed(verify_sealed(root / "A", keys.public_key), keys=provider).num_rows == 100


def test_wrong_master_key_is_a_decryption_error(world, tmp_path: Path) -> None:
    from securetrain.errors import DecryptionError

    root, keys, _, _ = world
    other = generate_keyset(tmp_path / "other")
    with pytest.raises(DecryptionError):
        open_sealed(
            verify_sealed(root / "A", keys.public_key), keys=provider_for_keydir(other.root)
        )
