"""Privacy accounting over dp_accounting events: pure functions, immutable event records."""

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

__all__ = [
    "ACCOUNTANTS",
    "Event",
    "GaussianEvent",
    "PoissonGaussianEvent",
    "calibrate_gaussian",
    "calibrate_noise",
    "check_delta",
    "check_epsilon",
    "compute_epsilon",
    "events_from_json",
    "events_to_json",
    "to_dp_event",
]
