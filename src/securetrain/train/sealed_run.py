"""Training on sealed data: verify, reserve privacy loss in the ledger, decrypt in memory,
checkpoint (encrypted), and resume a crashed run under its original reservation."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pyarrow as pa

from securetrain.data import Schema, TabularData, from_table
from securetrain.errors import ConfigError, IntegrityError
from securetrain.privacy import events_from_json
from securetrain.sealed import Header, VerifiedSealed, check_key, open_sealed, verify_sealed
from securetrain.store import Store, ledger
from securetrain.train.card import TrainResult
from securetrain.train.checkpoint import (
    TrainingState,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from securetrain.train.config import TrainConfig
from securetrain.train.loop import ProgressCallback
from securetrain.train.plan import MechanismPlan, RunPlan, plan_mechanism
from securetrain.train.source import SealedSource
from securetrain.train.trainer import ResolvedKeys, apply_classes, train_loaded


def _declared_schema(config: TrainConfig, header: Header) -> Schema | None:
    if config.schema_path:
        return Schema.load(config.schema_path)
    declared = header.doc.get("declared_schema")
    if declared is None:
        return None
    return Schema.from_json(declared, origin=f"declared schema of {config.data!r}")


def verify_source(source: SealedSource, keys: ResolvedKeys) -> VerifiedSealed:
    """Check that the keys are there and the sealed dataset's signature holds; no decryption."""
    if keys.provider is None:
        raise ConfigError(f"{str(source)!r} is a sealed dataset; give `key_dir` to decrypt it.")
    if keys.public_key is None:
        raise ConfigError("Give `public_key` to verify the sealed dataset's signature.")
    return verify_sealed(source.path, keys.public_key)


def open_verified(
    config: TrainConfig,
    keys: ResolvedKeys,
    verified: VerifiedSealed,
    *,
    on_decrypt: Callable[[], None] | None = None,
) -> TabularData:
    """Decrypt a verified sealed dataset into memory (never to disk); ``on_decrypt`` is called
    just before decryption begins."""
    assert keys.provider is not None
    header, digest = verified.header, verified.manifest_digest
    if on_decrypt is not None:
        on_decrypt()
    table = open_sealed(verified, keys=keys.provider)
    data = from_table(
        table,
        label=config.label or header.label,
        source=verified.path.name,
        sha256=digest,
        features=config.features,
        schema=_declared_schema(config, header),
        keep_identifiers=config.keep_identifiers,
    )
    data.sealed = {
        "dataset_id": header.dataset_id,
        "manifest_sha256": digest,
        "signer": verified.signer,
    }
    return apply_classes(config, data)


def plan_privacy(config: TrainConfig, header: Header) -> MechanismPlan:
    """The mechanism a run will apply, planned from the sealed header alone (no decryption):
    the schema decides the releases, and the header's row count less the test share stands in
    for the noisy count. The run under the reservation applies exactly this mechanism."""
    schema_only = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(header.doc["arrow_schema"])))
    like = from_table(
        schema_only.empty_table(),
        label=config.label or header.label,
        source=config.data,
        sha256="",
        features=config.features,
        schema=_declared_schema(config, header),
        keep_identifiers=True,
    )
    like = apply_classes(config, like)
    return plan_mechanism(config, like, n=max(1.0, header.rows * (1 - config.test_fraction)))


def _checkpointer(
    config: TrainConfig, keys: ResolvedKeys, run_id: str
) -> Callable[[RunPlan, TrainingState], None] | None:
    if not config.checkpoint_every:
        return None
    assert keys.provider is not None
    master = keys.provider.master_key()

    def save(plan: RunPlan, state: TrainingState) -> None:
        save_checkpoint(master, run_id, plan.model_dump(mode="json"), state)

    return save


def _complete(store: Store, run_id: str, result: TrainResult) -> TrainResult:
    p = result.card.privacy
    ledger.transition(
        store,
        run_id,
        "completed",
        events=events_from_json(p.events),
        epsilon=p.epsilon,
        delta_partition_selection=p.delta_partition_selection,
        details={"bundle": str(result.bundle), "epsilon": p.epsilon},
    )
    remove_checkpoint(run_id)
    result.run_id = run_id
    return result


def reserve_sealed(
    config: TrainConfig, keys: ResolvedKeys, source: SealedSource, *, store: Store
) -> str:
    """Verify the sealed dataset and the key, plan the run's privacy loss from the header alone
    and reserve it in ``store``'s ledger (no decryption); returns the run id."""
    if config.no_dp:
        raise ConfigError(
            "`no_dp` cannot be charged to a sealed dataset's privacy budget; unseal it explicitly for a baseline."
        )
    verified = verify_source(source, keys)
    assert keys.provider is not None
    check_key(verified, keys.provider)  # a wrong key fails here, before any reservation
    mechanism = plan_privacy(config, verified.header)
    assert config.epsilon is not None
    return ledger.reserve(
        store,
        dataset_id=verified.header.dataset_id,
        manifest_digest=verified.manifest_digest,
        name=source.path.name,
        events=mechanism.events(),
        epsilon=config.epsilon,
        delta_partition_selection=mechanism.selection_delta,
        parameters={
            "config": config.model_dump(mode="json", exclude={"store"}),  # no password kept
            "mechanism": mechanism.model_dump(mode="json"),
        },
    )


def reserved_mechanism(store: Store, run_id: str) -> MechanismPlan:
    """The mechanism a run reserved (what it may apply, and no more)."""
    return MechanismPlan.model_validate(ledger.get_run(store, run_id).parameters["mechanism"])


def reserved_dataset(
    source: SealedSource, keys: ResolvedKeys, store: Store, run_id: str
) -> VerifiedSealed:
    """The sealed dataset a run reserved its budget on, verified."""
    run = ledger.get_run(store, run_id)
    verified = verify_source(source, keys)
    if verified.header.dataset_id != run.dataset_id:
        raise IntegrityError(
            f"{str(source)!r} is not the dataset that run {run_id} reserved budget on"
        )
    return verified


def train_reserved(
    config: TrainConfig,
    keys: ResolvedKeys,
    source: SealedSource,
    run_id: str,
    progress: ProgressCallback | None,
    *,
    store: Store,
) -> TrainResult:
    """Train under an existing reservation in ``store``: decrypt in memory, train with exactly
    the reserved mechanism, record what ran. A run stopped before decryption (a sealed file that
    no longer verifies, say) releases its reservation; once decryption has begun (even if the
    table then fails to parse), the charge stays."""
    run = ledger.get_run(store, run_id)
    if run.state != "reserved":
        raise ConfigError(f"Run {run_id} is {run.state}; only a reserved run can start training.")
    mechanism = reserved_mechanism(store, run_id)
    decrypting = False

    def started() -> None:
        nonlocal decrypting
        decrypting = True

    try:
        verified = reserved_dataset(source, keys, store, run_id)
        data = open_verified(config, keys, verified, on_decrypt=started)
        ledger.transition(store, run_id, "running")
        result = train_loaded(
            config,
            data,
            keys,
            progress,
            reserved=mechanism,
            on_checkpoint=_checkpointer(config, keys, run_id),
        )
    except BaseException as exc:
        ledger.transition(
            store,
            run_id,
            "failed" if decrypting else "released",
            details={"error": type(exc).__name__},
        )
        raise
    return _complete(store, run_id, result)


def train_sealed(
    config: TrainConfig,
    keys: ResolvedKeys,
    source: SealedSource,
    progress: ProgressCallback | None,
    on_run: Callable[[str], None] | None = None,
) -> TrainResult:
    """Verify, reserve the planned privacy loss in the ledger, and only then decrypt and train."""
    with Store(config.store) as store:
        run_id = reserve_sealed(config, keys, source, store=store)
        if on_run is not None:
            on_run(run_id)
        return train_reserved(config, keys, source, run_id, progress, store=store)


RESUMABLE = ("running", "failed")


def resumed_config(config: TrainConfig) -> TrainConfig:
    """The crashed run's own configuration, with this invocation's keys, store and output."""
    assert config.resume is not None
    with Store(config.store) as store:
        run = ledger.get_run(store, config.resume)
    if run.state not in RESUMABLE:
        raise ConfigError(
            f"Run {config.resume} is {run.state}; only a running or failed run can be resumed."
        )
    original = TrainConfig.model_validate(run.parameters["config"])
    overrides = {
        k: v
        for k, v in config.model_dump().items()
        if k in ("key_dir", "passphrase_env", "public_key", "sign_key", "store") and v is not None
    }
    if config.out is not None:
        overrides["out"] = config.out
    return original.model_copy(update={**overrides, "resume": config.resume})


def resume_sealed(
    config: TrainConfig,
    keys: ResolvedKeys,
    source: SealedSource,
    progress: ProgressCallback | None,
) -> TrainResult:
    """Continue a crashed run from its last encrypted checkpoint, under the same reservation."""
    assert config.resume is not None
    run_id = config.resume
    with Store(config.store) as store:
        verified = reserved_dataset(source, keys, store, run_id)
        assert keys.provider is not None
        plan_json, state = load_checkpoint(keys.provider.master_key(), run_id)
        plan = RunPlan.model_validate(plan_json)
        try:
            data = open_verified(config, keys, verified)
            ledger.transition(store, run_id, "running", details={"resumed_from_step": state.step})
            result = train_loaded(
                config,
                data,
                keys,
                progress,
                plan=plan,
                resume=state,
                on_checkpoint=_checkpointer(config, keys, run_id),
            )
        except BaseException as exc:
            ledger.transition(store, run_id, "failed", details={"error": type(exc).__name__})
            raise
        return _complete(store, run_id, result)
