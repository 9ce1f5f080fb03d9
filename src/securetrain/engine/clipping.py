"""Per-sample clipping strategies, looked up per layer type.

A strategy turns what one backward pass leaves behind for one layer (its inputs and the
gradient of the loss with respect to its output, per sample) into two things the optimizer
needs: each sample's squared gradient norm for the layer's own parameters, and the sum of
per-sample gradients weighted by each sample's clipping factor.

Register a faster strategy for a layer type with :func:`register_clipping`; any layer without
one uses :class:`GenericStrategy`, which gets per-sample gradients from ``torch.func``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, grad, vmap


@dataclass
class LayerTrace:
    """What one call of a layer left behind: its inputs and the output gradients.

    ``backprops`` is the gradient of the loss with respect to the layer's output, so its first
    dimension is the batch; ``scale`` times it is the gradient of each sample's own loss (the
    batch size when the loss is a batch mean, else 1).
    """

    inputs: tuple[torch.Tensor, ...]
    backprops: torch.Tensor
    scale: float = 1.0
    # (strategy, state) when the layer was prepared as soon as its gradient arrived; inputs and
    # output gradients are then no longer held.
    prepared: tuple[ClippingStrategy, object] | None = None


class ClippingStrategy(Protocol):
    """How to clip one layer type's per-sample gradients."""

    def prepare(self, module: nn.Module, trace: LayerTrace) -> object:
        """Do the work shared by the two methods below (for example per-sample gradients)."""

    def squared_norms(self, prepared: object) -> torch.Tensor:
        """Per-sample squared norm of the gradient of the layer's own parameters, shape [B]."""

    def weighted_sum(self, prepared: object, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """``sum_i weights[i] * grad_i`` for each of the layer's own parameters, by name."""


_REGISTRY: dict[type[nn.Module], ClippingStrategy] = {}


def register_clipping(*layer_types: type[nn.Module]) -> Callable[[type], type]:
    """Class decorator: use this strategy for the given layer types (exact type match)."""

    def decorate(cls: type) -> type:
        for layer_type in layer_types:
            _REGISTRY[layer_type] = cls()
        return cls

    return decorate


def own_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters a module holds itself (not those of its children)."""
    return {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad}


class GenericStrategy:
    """Per-sample gradients of any batch-separable layer with ``vmap(grad(functional_call))``."""

    def prepare(self, module: nn.Module, trace: LayerTrace) -> dict[str, torch.Tensor]:
        params = {n: p.detach() for n, p in own_parameters(module).items()}
        if trace.backprops.shape[0] == 0:
            return {n: p.new_zeros((0, *p.shape)) for n, p in params.items()}

        def contribution(
            p: dict[str, torch.Tensor], inputs: tuple[torch.Tensor, ...], backprop: torch.Tensor
        ) -> torch.Tensor:
            batched = tuple(x.unsqueeze(0) for x in inputs)
            out = functional_call(module, p, batched)
            return (out * backprop.unsqueeze(0)).sum()

        return vmap(grad(contribution), in_dims=(None, 0, 0))(params, trace.inputs, trace.backprops)

    def squared_norms(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(g.flatten(1).pow(2).sum(1) for g in prepared.values())

    def weighted_sum(
        self, prepared: dict[str, torch.Tensor], weights: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {n: torch.tensordot(weights, g, dims=1) for n, g in prepared.items()}


_GENERIC = GenericStrategy()


CLIPPING_MODES = ("auto", "fast", "generic")


def has_fast_strategy(module: nn.Module) -> bool:
    return type(module) in _REGISTRY


def strategy_for(module: nn.Module, mode: str = "auto") -> ClippingStrategy:
    """``auto``: the registered strategy, else the generic one; ``fast``: the registered one
    (the caller has checked it exists); ``generic``: always ``torch.func``."""
    if mode == "generic":
        return _GENERIC
    return _REGISTRY.get(type(module), _GENERIC)
