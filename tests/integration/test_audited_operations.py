"""The library, not only the CLI, records key sets, sealing, verification, unsealing and bundles
in the audit log, with their fields; a failed operation records nothing."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from securetrain.crypto import fingerprint, load_public_key, provider_for_keydir
from securetrain.crypto.signing import signed_manifest_digest
from securetrain.errors import IntegrityError
from securetrain.sealed import HEADER, SIGNATURE
from securetrain.store import Store, entries, verify_log
from securetrain.train import (
    TrainResult,
    audited_bundle,
    audited_keyset,
    audited_seal,
    audited_unseal,
    audited_verify,
)


def _last(store: Store) -> tuple[str, str, dict[str, Any]]:
    e = entries(store)[-1]
    return e.action, e.object, e.details


def test_each_operation_leaves_its_entry(tmp_path: Path) -> None:
    table = pa.table({"x": [1.5, 2.5, None], "y": ["a", "b", "a"]})
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        keys = audited_keyset(store, tmp_path / "keys")
        fp = fingerprint(load_public_key(keys.public_key))
        assert _last(store) == (
            "keys.created",
            str(tmp_path / "keys"),
            {"fingerprint": fp, "passphrase": False},
        )
        sealed = tmp_path / "d.sealed"
        header = audited_seal(
            store,
            table,
            sealed,
            keys=provider_for_keydir(keys.root),
            signing_key=keys.signing_key,
            rows_per_chunk=2,
        )
        assert _last(store) == (
            "dataset.sealed",
            str(sealed),
            {
                "dataset_id": header.dataset_id,
                "rows": 3,
                "chunks": 2,
                "signer": fp,
                "recipient": None,
            },
        )
        verified = audited_verify(store, sealed, keys.public_key)
        manifest = signed_manifest_digest(sealed, SIGNATURE)
        assert verified.manifest_digest == manifest
        assert _last(store) == (
            "dataset.verified",
            str(sealed),
            {"dataset_id": header.dataset_id, "manifest": manifest},
        )
        out = tmp_path / "plain.parquet"
        rows = audited_unseal(
            store, sealed, out, keys=provider_for_keydir(keys.root), public_key=keys.public_key
        )
        assert rows == 3 and pq.read_table(out).equals(table)
        assert _last(store) == (
            "dataset.unsealed",
            str(sealed),
            {"out": str(out), "dataset_id": header.dataset_id},
        )
        assert [e.action for e in entries(store)] == [
            "keys.created",
            "dataset.sealed",
            "dataset.verified",
            "dataset.unsealed",
        ]
        assert verify_log(store) == 4


def test_a_failed_verification_records_nothing(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        keys = audited_keyset(store, tmp_path / "keys")
        sealed = tmp_path / "d.sealed"
        audited_seal(
            store,
            pa.table({"x": [1, 2]}),
            sealed,
            keys=provider_for_keydir(keys.root),
            signing_key=keys.signing_key,
        )
        (sealed / HEADER).write_bytes((sealed / HEADER).read_bytes() + b" ")
        with pytest.raises(IntegrityError):
            audited_verify(store, sealed, keys.public_key)
        with pytest.raises(IntegrityError):
            audited_unseal(
                store,
                sealed,
                tmp_path / "p.parquet",
                keys=provider_for_keydir(keys.root),
                public_key=keys.public_key,
            )
        assert [e.action for e in entries(store)] == ["keys.created", "dataset.sealed"]
        assert not (tmp_path / "p.parquet").exists()


def test_a_written_bundle_is_recorded(tmp_path: Path) -> None:
    card = SimpleNamespace(
        signing=SimpleNamespace(signer="sha256:abc"), privacy=SimpleNamespace(epsilon=1.25)
    )
    result = cast(TrainResult, SimpleNamespace(card=card, bundle=tmp_path / "b", run_id="r1"))
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        audited_bundle(store, result)
        assert _last(store) == (
            "run.bundle_written",
            str(tmp_path / "b"),
            {"run_id": "r1", "signed_by": "sha256:abc", "epsilon": 1.25},
        )
