"""Federated training across sites on Flower, with per-site DP-SGD."""
