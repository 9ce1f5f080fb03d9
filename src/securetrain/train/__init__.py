"""The training pipeline and built-in models."""

from securetrain.train.config import TrainConfig
from securetrain.train.models import MODELS, build_model
from securetrain.train.run import train
from securetrain.train.trainer import NO_DP_WARNING, StepInfo, TrainResult, evaluate

__all__ = [
    "MODELS",
    "NO_DP_WARNING",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "evaluate",
    "train",
]
