"""securetrain: secure model training with differential privacy.

The public API is exactly ``__all__``; every other module is private and may change.
"""

from importlib import metadata as _metadata

from securetrain.bundle import ModelCard
from securetrain.data import load_dataset
from securetrain.engine import (
    DPOptimizer,
    make_private,
    make_private_with_epsilon,
    register_clipping,
)
from securetrain.errors import SecureTrainError
from securetrain.privacy import (
    GaussianEvent,
    PoissonGaussianEvent,
    calibrate_noise,
    compute_epsilon,
)
from securetrain.train import TrainConfig, train

try:
    __version__ = _metadata.version("securetrain")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "DPOptimizer",
    "GaussianEvent",
    "ModelCard",
    "PoissonGaussianEvent",
    "SecureTrainError",
    "TrainConfig",
    "__version__",
    "calibrate_noise",
    "compute_epsilon",
    "load_dataset",
    "make_private",
    "make_private_with_epsilon",
    "register_clipping",
    "train",
]
