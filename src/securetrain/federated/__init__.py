"""Federated training across sites on Flower, with per-site DP-SGD."""

import os

# Flower's telemetry stays off in every process securetrain starts (Ray workers inherit it).
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
