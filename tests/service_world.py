"""A team service with real data, keys and accounts, for the service tests: two owners with a
sealed dataset each, two analysts, an auditor and an admin; and a sealed dataset with a bad
label column, for jobs that fail after decryption."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from securetrain.crypto.keys import generate_keyset
from securetrain.crypto.providers import provider_for_keydir
from securetrain.data import load_builtin
from securetrain.sealed import seal_dataset, seal_table
from securetrain.service import auth
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
    keys = generate_keyset(root / "service-keys")
    data_dir = root / "data"
    data_dir.mkdir()
    provider = provider_for_keydir(root / "service-keys")
    for name in ("ward-a.sealed", "ward-b.sealed"):
        seal_dataset(
            load_builtin("breast-cancer"),
            data_dir / name,
            keys=provider,
            signing_key=keys.signing_key,
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
        keys=provider,
        signing_key=keys.signing_key,
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
    return World(root, settings, store)
