"""A team service with real data, keys and accounts, for the service tests: two owners, each with
their own key set (signing key bound to their account) and a dataset sealed for the service's
public encryption key, two analysts, an auditor and an admin; and alice's sealed dataset with a
bad label column, for jobs that fail after decryption."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from securetrain.crypto.keys import generate_keyset
from securetrain.data import load_builtin
from securetrain.sealed import seal_dataset, seal_table
from securetrain.service import auth, registry
from securetrain.service.settings import ServiceSettings
from securetrain.store import Store

PASSWORD = "correct horse battery staple"
BAD_LABELS = "ward-bad.sealed"  # breast-cancer with one missing label: fails after decryption
MISSING_LABEL_ROW = 7
ROLES = {
    "alice": "owner",
    "oscar": "owner",
    "ana": "analyst",
    "bob": "analyst",
    "audrey": "auditor",
    "adam": "admin",
}


@dataclass
class World:
    root: Path
    settings: ServiceSettings
    store: Store
    datasets: dict[str, str] = field(default_factory=dict)  # file name -> dataset id


def build_world(root: Path, store_url: str) -> World:
    service = generate_keyset(root / "service-keys")
    owners = {o: generate_keyset(root / f"{o}-keys") for o in ("alice", "oscar")}
    data_dir = root / "data"
    data_dir.mkdir()
    for name, owner in (("ward-a.sealed", "alice"), ("ward-b.sealed", "oscar")):
        seal_dataset(
            load_builtin("breast-cancer"),
            data_dir / name,
            recipient=service.encryption_public_key,
            signing_key=owners[owner].signing_key,
        )
    (data_dir / "notes.txt").write_text("not a sealed dataset\n")
    data = load_builtin("breast-cancer")
    table = data.to_table()
    labels = table.column(data.label_name).to_pylist()
    labels[MISSING_LABEL_ROW] = None
    seal_table(
        table.set_column(
            table.column_names.index(data.label_name), data.label_name, pa.array(labels)
        ),
        data_dir / BAD_LABELS,
        recipient=service.encryption_public_key,
        signing_key=owners["alice"].signing_key,
        label=data.label_name,
        declared_schema=data.schema.to_json(),
    )
    settings = ServiceSettings(
        store=store_url,
        data_dir=data_dir,
        key_dir=root / "service-keys",
        results_dir=root / "results",
    )
    store = settings.open_store()
    for name, role in ROLES.items():
        auth.add_user(store, name, role, PASSWORD)
    for owner, keys in owners.items():
        pem = keys.public_key.read_bytes()
        registry.bind_owner_key(store, settings, owner, pem, actor="adam")
    return World(root, settings, store)
