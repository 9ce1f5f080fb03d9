"""Owners hold only their own keys: each seals for the service's public encryption key and signs
with a signing key bound to their account. Attacks: an owner's key set opens no registered
dataset; a dataset signed by another key is refused at registration and at use."""

from __future__ import annotations

import shutil

import pytest

from securetrain.crypto import provider_for_keydir
from securetrain.crypto.keys import KeySetPaths, generate_keyset
from securetrain.data import load_builtin
from securetrain.errors import ConfigError, DecryptionError, IntegrityError
from securetrain.sealed import open_sealed, seal_dataset, verify_sealed
from securetrain.service import registry
from securetrain.service.auth import User
from securetrain.service.jobs import JobRequest, submit
from tests.service_world import BAD_LABELS, build_world

ALICE, OSCAR, ANA = User("alice", "owner"), User("oscar", "owner"), User("ana", "analyst")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("owner-keys")
    return build_world(root, f"sqlite:///{root / 'store.db'}")


def test_no_owner_key_set_opens_a_registered_dataset(world) -> None:
    ds = registry.register(
        world.store, world.settings, OSCAR, "ward-b.sealed", None, registry.Limits()
    )
    path = world.settings.data_dir / ds.path
    verified = verify_sealed(path, KeySetPaths(world.root / "oscar-keys").public_key)
    for owner in ("alice", "oscar"):  # the other owner, and even the dataset's own owner
        with pytest.raises(DecryptionError):
            open_sealed(verified, keys=provider_for_keydir(world.root / f"{owner}-keys"))
    service = provider_for_keydir(world.settings.key_dir)
    expected = load_builtin("breast-cancer").to_table()
    assert open_sealed(verified, keys=service).num_rows == expected.num_rows


def test_dataset_signed_by_another_key_is_refused_at_registration(world) -> None:
    with pytest.raises(IntegrityError):  # alice's dataset, claimed by oscar
        registry.register(world.store, world.settings, OSCAR, BAD_LABELS, None, registry.Limits())
    rogue = generate_keyset(world.root / "rogue-keys")
    seal_dataset(
        load_builtin("breast-cancer"),
        world.settings.data_dir / "rogue.sealed",
        recipient=KeySetPaths(world.settings.key_dir).encryption_public_key,
        signing_key=rogue.signing_key,
    )
    for owner in (ALICE, OSCAR):
        with pytest.raises(IntegrityError):
            registry.register(
                world.store, world.settings, owner, "rogue.sealed", None, registry.Limits()
            )
    with pytest.raises(ConfigError, match="already has a signing key"):
        registry.bind_owner_key(
            world.store, world.settings, "alice", rogue.public_key.read_bytes(), actor="adam"
        )
    with pytest.raises(ConfigError, match="not an active owner"):
        registry.bind_owner_key(
            world.store, world.settings, "ana", rogue.public_key.read_bytes(), actor="adam"
        )


def test_dataset_sealed_for_oneself_is_refused_at_registration(world) -> None:
    alice = KeySetPaths(world.root / "alice-keys")
    seal_dataset(
        load_builtin("breast-cancer"),
        world.settings.data_dir / "own.sealed",
        keys=provider_for_keydir(alice.root),
        signing_key=alice.signing_key,
    )
    with pytest.raises(ConfigError, match="not sealed for this service's encryption key"):
        registry.register(world.store, world.settings, ALICE, "own.sealed", None, registry.Limits())


def test_dataset_replaced_by_one_signed_by_another_key_is_refused_at_use(world) -> None:
    ds = registry.register(
        world.store, world.settings, ALICE, "ward-a.sealed", None, registry.Limits(False)
    )
    registry.grant(world.store, ALICE, ds.id, "ana")
    path = world.settings.data_dir / ds.path
    shutil.rmtree(path)
    shutil.copytree(world.settings.data_dir / "ward-b.sealed", path)  # oscar's, signed by oscar
    with pytest.raises(IntegrityError):
        submit(world.store, world.settings, ANA, JobRequest(dataset_id=ds.id, epsilon=1.0))
    with pytest.raises(IntegrityError):
        registry.set_budget(world.store, world.settings, ALICE, ds.id, 5.0, 1e-5)


def test_owner_without_a_bound_key_cannot_register(world) -> None:
    from securetrain.service import auth

    auth.add_user(world.store, "olga", "owner", "correct horse battery staple")
    with pytest.raises(ConfigError, match="no signing key bound"):
        registry.register(
            world.store, world.settings, User("olga", "owner"), BAD_LABELS, None, registry.Limits()
        )
