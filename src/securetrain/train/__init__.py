"""The training pipeline and built-in models."""

from securetrain.train.audited import (
    audited_bundle,
    audited_keyset,
    audited_seal,
    audited_unseal,
    audited_verify,
)
from securetrain.train.card import NO_DP_WARNING, TrainResult, signing_section
from securetrain.train.config import Hyperparameters, KeySettings, TrainConfig
from securetrain.train.loop import ProgressCallback, StepInfo, fit
from securetrain.train.metrics import dp_metrics, evaluate, predict_proba
from securetrain.train.models import MODELS, architecture_for, build_model
from securetrain.train.plan import DPPlan
from securetrain.train.predict import check_signature, load_model, predict_file
from securetrain.train.run import load_data, train
from securetrain.train.sealed_run import (
    open_verified,
    reserve_sealed,
    train_reserved,
    verify_source,
)
from securetrain.train.source import (
    BuiltinSource,
    FileSource,
    SealedSource,
    Source,
    parse_sealed,
    parse_source,
)
from securetrain.train.trainer import ResolvedKeys, resolve_keys

__all__ = [
    "BuiltinSource",
    "DPPlan",
    "FileSource",
    "Hyperparameters",
    "KeySettings",
    "MODELS",
    "NO_DP_WARNING",
    "ProgressCallback",
    "ResolvedKeys",
    "SealedSource",
    "Source",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "architecture_for",
    "audited_bundle",
    "audited_keyset",
    "audited_seal",
    "audited_unseal",
    "audited_verify",
    "build_model",
    "check_signature",
    "dp_metrics",
    "evaluate",
    "fit",
    "load_data",
    "load_model",
    "open_verified",
    "parse_sealed",
    "parse_source",
    "predict_file",
    "predict_proba",
    "reserve_sealed",
    "resolve_keys",
    "signing_section",
    "train",
    "train_reserved",
    "verify_source",
]
