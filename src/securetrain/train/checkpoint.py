"""Encrypted training checkpoints: model, optimizer, the sampling and noise generator's state (its
AES-256 key and keystream counter, so a resumed run continues the same stream) and the run plan.

A checkpoint is one file under ``SECURETRAIN_HOME/checkpoints/RUN_ID.ckpt``: JSON holding a
fresh data key wrapped by the key set's master key and the AES-256-GCM ciphertext of the
payload (a length-prefixed JSON header followed by safetensors bytes; no pickle). Its associated
data binds the run id, so a checkpoint cannot be replayed into another run. Files are written
to a temporary name and renamed, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from securetrain.crypto import aead
from securetrain.errors import DataError, IntegrityError
from securetrain.store import securetrain_home

FORMAT = "securetrain.checkpoint/v1"
_AAD = b"securetrain.checkpoint/v1:"


def checkpoint_path(run_id: str) -> Path:
    root = securetrain_home() / "checkpoints"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root / f"{run_id}.ckpt"


@dataclass
class TrainingState:
    """Where a DP-SGD loop stands after ``step`` steps."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng_state: torch.Tensor
    secure_rng: bool


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    master_key: bytes, run_id: str, plan: dict[str, Any], state: TrainingState
) -> Path:
    opt_tensors, opt_meta = _flatten_optimizer(state.optimizer)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in state.model.items()}
    tensors.update({k: v.detach().contiguous().cpu() for k, v in opt_tensors.items()})
    tensors["rng_state"] = state.rng_state
    header = json.dumps(
        {
            "format": FORMAT,
            "run_id": run_id,
            "step": state.step,
            "plan": plan,
            "optimizer": opt_meta,
            "secure_rng": state.secure_rng,
        }
    ).encode()
    payload = len(header).to_bytes(8, "big") + header + save_tensors(tensors)
    data_key = aead.new_key()
    aad = _AAD + run_id.encode()
    doc = {
        "format": FORMAT,
        "run_id": run_id,
        "wrapped_key": base64.b64encode(aead.encrypt(master_key, data_key, aad + b":key")).decode(),
        "ciphertext": base64.b64encode(aead.encrypt(data_key, payload, aad)).decode(),
    }
    path = checkpoint_path(run_id)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
    return path


def load_checkpoint(master_key: bytes, run_id: str) -> tuple[dict[str, Any], TrainingState]:
    """The run plan and the training state; wrong key or tampering raise security errors."""
    path = checkpoint_path(run_id)
    if not path.is_file():
        raise DataError(
            f"Run {run_id} has no checkpoint to resume from (train with `checkpoint_every` N)."
        )
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT or doc.get("run_id") != run_id:
            raise ValueError
        wrapped, ciphertext = (
            base64.b64decode(doc["wrapped_key"]),
            base64.b64decode(doc["ciphertext"]),
        )
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"checkpoint of run {run_id} is damaged") from None
    aad = _AAD + run_id.encode()
    data_key = aead.decrypt(master_key, wrapped, aad + b":key")
    payload = aead.decrypt(data_key, ciphertext, aad)
    size = int.from_bytes(payload[:8], "big")
    header = json.loads(payload[8 : 8 + size])
    tensors = load_tensors(payload[8 + size :])
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    return header["plan"], TrainingState(
        step=int(header["step"]),
        model=model,
        optimizer=_unflatten_optimizer(tensors, header["optimizer"]),
        rng_state=tensors["rng_state"],
        secure_rng=bool(header["secure_rng"]),
    )


def remove_checkpoint(run_id: str) -> None:
    checkpoint_path(run_id).unlink(missing_ok=True)
