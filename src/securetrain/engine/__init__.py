"""DP-SGD: Poisson sampling, per-sample clipping strategies, noise, the optimizer step."""

from securetrain.engine import strategies  # noqa: F401  (importing it registers the fast strategies)
from securetrain.engine.api import make_private, make_private_with_epsilon
from securetrain.engine.clipping import (
    ClippingStrategy,
    GenericStrategy,
    Grouping,
    LayerTrace,
    clipped_sums,
    register_clipping,
    strategy_for,
)
from securetrain.engine.noise import make_generator
from securetrain.engine.optimizer import DPOptimizer
from securetrain.engine.sampling import (
    DPDataLoader,
    PoissonBatchSampler,
    UnitPoissonSampler,
    split_physical,
    split_physical_units,
)
from securetrain.engine.tracer import GradientTracer, check_per_sample

__all__ = [
    "ClippingStrategy",
    "DPDataLoader",
    "DPOptimizer",
    "GenericStrategy",
    "GradientTracer",
    "Grouping",
    "LayerTrace",
    "PoissonBatchSampler",
    "UnitPoissonSampler",
    "check_per_sample",
    "clipped_sums",
    "make_generator",
    "make_private",
    "make_private_with_epsilon",
    "register_clipping",
    "split_physical",
    "split_physical_units",
    "strategy_for",
]
