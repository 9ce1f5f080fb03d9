"""Built-in models, rebuilt at prediction time from the architecture recorded in the card."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from securetrain.bundle.card import Architecture
from securetrain.errors import ConfigError

ModelName = Literal["logreg", "mlp", "cnn"]
MODELS: tuple[ModelName, ...] = ("logreg", "mlp", "cnn")


class ImageCNN(nn.Module):
    """A small CNN with GroupNorm (BatchNorm would break per-sample gradients)."""

    def __init__(
        self, image_shape: list[int], n_classes: int, channels: tuple[int, int] = (16, 32)
    ):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1),
            nn.GroupNorm(4, c1),
            nn.Tanh(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.GroupNorm(4, c2),
            nn.Tanh(),
        )
        self.head = nn.Linear(c2 * math.ceil(h / 2) * math.ceil(w / 2), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.image_shape)
        return self.head(self.features(x).flatten(1))


def architecture_for(
    name: str, *, n_features: int, n_classes: int, image_shape: list[int] | None
) -> Architecture:
    model = next((m for m in MODELS if m == name), None)
    if model is None:
        raise ConfigError(f"Model must be one of {', '.join(MODELS)}. Found {name!r}.")
    if model == "cnn":
        if not image_shape:
            raise ConfigError(
                "Model 'cnn' needs image data (for example builtin:digits); use logreg or mlp."
            )
        if math.prod(image_shape) != n_features:
            raise ConfigError(f"Image shape {image_shape} does not match {n_features} features.")
    hidden = [64, 64] if model == "mlp" else []
    return Architecture(
        name=model,
        n_features=n_features,
        n_classes=n_classes,
        hidden=hidden,
        image_shape=image_shape if model == "cnn" else None,
    )


def build_model(arch: Architecture) -> nn.Module:
    if arch.name == "logreg":
        return nn.Linear(arch.n_features, arch.n_classes)
    if arch.name == "mlp":
        layers: list[Any] = []
        width = arch.n_features
        for h in arch.hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        return nn.Sequential(*layers, nn.Linear(width, arch.n_classes))
    assert arch.image_shape is not None
    return ImageCNN(arch.image_shape, arch.n_classes)
