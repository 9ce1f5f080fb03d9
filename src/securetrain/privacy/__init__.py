"""Privacy accounting over dp_accounting events: pure functions, immutable event records; the
DP-SGD planner; the Gaussian mechanisms that release preprocessing statistics."""

from securetrain.privacy.accounting import (
    ACCOUNTANTS,
    calibrate_gaussian,
    calibrate_noise,
    check_delta,
    check_epsilon,
    compute_epsilon,
)
from securetrain.privacy.events import (
    Event,
    GaussianEvent,
    PoissonGaussianEvent,
    events_from_json,
    events_to_json,
    to_dp_event,
)
from securetrain.privacy.planner import (
    Deltas,
    DPSGDPlan,
    default_batch_size,
    default_delta,
    dominates,
    plan_deltas,
    plan_dp_sgd,
)
from securetrain.privacy.releases import Release, noisy_counts

__all__ = [
    "ACCOUNTANTS",
    "DPSGDPlan",
    "Deltas",
    "Event",
    "GaussianEvent",
    "PoissonGaussianEvent",
    "Release",
    "calibrate_gaussian",
    "calibrate_noise",
    "check_delta",
    "check_epsilon",
    "compute_epsilon",
    "default_batch_size",
    "default_delta",
    "dominates",
    "events_from_json",
    "events_to_json",
    "noisy_counts",
    "plan_deltas",
    "plan_dp_sgd",
    "to_dp_event",
]
