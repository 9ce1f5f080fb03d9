"""Per-sample clipping strategies, looked up per layer type.

A strategy turns what one backward pass leaves behind for one layer (its inputs and the
gradient of the loss with respect to its output, per sample) into two things the optimizer
needs: each sample's squared gradient norm for the layer's own parameters, and the sum of
per-sample gradients weighted by each sample's clipping factor.

Register a faster strategy for a layer type with :func:`register_clipping`; any layer without
one uses :class:`GenericStrategy`, which gets per-sample gradients from ``torch.func``.
:func:`clipped_sums` combines the layers' strategies into clipped sums, flat or per layer, per
sample or, given a :class:`Grouping`, per privacy unit (all the rows of one patient, say).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, get_args

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from securetrain.errors import ConfigError

Clipping = Literal["auto", "fast", "generic"]
"""The ``clipping`` setting: each layer's registered fast strategy, else the generic one
(``auto``); the fast one for every layer, refusing a layer without (``fast``); ``torch.func``
everywhere (``generic``)."""
CLIPPING_CHOICES: tuple[Clipping, ...] = get_args(Clipping)
ClippingMode = Literal["flat", "per_layer"]
"""The ``clipping_mode`` setting: one bound on a sample's whole gradient (``flat``), or one bound
per layer on its part of it (``per_layer``)."""
CLIPPING_MODES: tuple[ClippingMode, ...] = get_args(ClippingMode)


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
    prepared: tuple[ClippingStrategy[Any], object] | None = None


State = TypeVar("State")


class ClippingStrategy(Protocol[State]):
    """How to clip one layer type's per-sample gradients; ``State`` is what ``prepare`` keeps
    for the other two methods (each strategy has its own)."""

    def prepare(self, module: nn.Module, trace: LayerTrace) -> State:
        """Do the work shared by the two methods below (for example per-sample gradients)."""

    def squared_norms(self, prepared: State) -> torch.Tensor:
        """Per-sample squared norm of the gradient of the layer's own parameters, shape [B]."""

    def weighted_sum(self, prepared: State, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """``sum_i weights[i] * grad_i`` for each of the layer's own parameters, by name."""


# Strategies of different layer types keep different states: Any stands for "its own".
_REGISTRY: dict[type[nn.Module], ClippingStrategy[Any]] = {}


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
            # functional_call returns what the layer's forward does: a tensor, for these layers
            out: torch.Tensor = functional_call(module, p, batched)
            return (out * backprop.unsqueeze(0)).sum()

        # torch.func is untyped; grad over a dict of parameters gives a dict by the same names
        grads: dict[str, torch.Tensor] = vmap(grad(contribution), in_dims=(None, 0, 0))(
            params, trace.inputs, trace.backprops
        )
        return grads

    def squared_norms(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum((g.flatten(1).pow(2).sum(1) for g in prepared.values()), torch.zeros(()))

    def weighted_sum(
        self, prepared: dict[str, torch.Tensor], weights: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {n: torch.tensordot(weights, g, dims=1) for n, g in prepared.items()}


_GENERIC = GenericStrategy()


def has_fast_strategy(module: nn.Module) -> bool:
    return type(module) in _REGISTRY


def strategy_for(module: nn.Module, clipping: Clipping = "auto") -> ClippingStrategy[Any]:
    """``auto``: the registered strategy, else the generic one; ``fast``: the registered one
    (the caller has checked it exists); ``generic``: always ``torch.func``."""
    if clipping == "generic":
        return _GENERIC
    return _REGISTRY.get(type(module), _GENERIC)


@dataclass(frozen=True)
class Grouping:
    """Which privacy unit each row of a batch belongs to: ``unit`` holds each row's unit as
    0..U-1, ``slots`` each unit's rows (U x the most rows of any unit; -1 where a unit has
    fewer). A unit's gradient is the sum of its rows' gradients, clipped as one."""

    unit: torch.Tensor
    slots: torch.Tensor

    @classmethod
    def of(cls, units: torch.Tensor) -> Grouping:
        """The grouping of a batch whose rows belong to ``units`` (any integer labels)."""
        if units.dim() != 1 or units.dtype.is_floating_point or units.is_complex():
            raise ConfigError(
                "Units must be one integer label per row of the batch. Found a tensor of "
                f"shape {tuple(units.shape)} and type {units.dtype}."
            )
        labels, unit = torch.unique(units, return_inverse=True)
        counts = torch.bincount(unit, minlength=len(labels))
        order = torch.argsort(unit, stable=True)
        first = torch.cumsum(counts, 0) - counts
        position = torch.arange(len(unit)) - first[unit[order]]
        width = int(counts.max()) if len(labels) else 0
        slots = torch.full((len(labels), width), -1, dtype=torch.long)
        slots[unit[order], position] = order
        return cls(unit, slots)

    @property
    def n_units(self) -> int:
        return int(self.slots.shape[0])

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """``t``'s rows by unit, U x width x ...; zero in a unit's empty slots."""
        rows = t[self.slots.clamp(min=0)]
        filled = (self.slots >= 0).reshape(*self.slots.shape, *([1] * (t.dim() - 1)))
        return torch.where(filled, rows, torch.zeros((), dtype=t.dtype))

    def segment_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t``'s rows within each unit, U x ..."""
        return t.new_zeros((self.n_units, *t.shape[1:])).index_add_(0, self.unit, t)


# Layers that act on each position alone: a unit's rows, laid side by side as the positions of
# one sample, give that unit's summed gradient from the layer's own strategy.
_POSITIONWISE = (nn.Linear, nn.Embedding, nn.LayerNorm)


def prepare_for_units(
    layer: nn.Module, traces: list[LayerTrace], groups: Grouping, clipping: Clipping
) -> tuple[ClippingStrategy[Any], Any]:
    """A layer's per-unit state: its strategy on the unit-gathered trace for a position-wise
    layer, else the per-sample gradients summed within each unit."""
    if any(t.prepared is not None for t in traces):
        raise ConfigError("Per-unit clipping needs each layer's trace before it is prepared.")
    strategy = strategy_for(layer, clipping)
    if len(traces) == 1 and isinstance(layer, _POSITIONWISE) and strategy is not _GENERIC:
        trace = traces[0]
        gathered = LayerTrace(
            tuple(groups.gather(x) for x in trace.inputs),
            groups.gather(trace.backprops),
            trace.scale,
        )
        return strategy, strategy.prepare(layer, gathered)
    parts = [_GENERIC.prepare(layer, t) for t in traces]
    summed = {k: torch.stack([p[k] for p in parts]).sum(0) for k in parts[0]}
    return _GENERIC, {k: groups.segment_sum(g) for k, g in summed.items()}


Sums = dict[str, dict[str, torch.Tensor]]


def clipped_sums(
    layers: dict[str, nn.Module],
    traces: dict[str, list[LayerTrace]],
    max_grad_norm: float | dict[str, float],
    *,
    clipping: Clipping = "auto",
    with_unclipped: bool = False,
    groups: Grouping | None = None,
) -> tuple[Sums, int, Sums | None]:
    """Sum over samples of the per-sample gradients, each clipped in L2; with ``groups``, over
    units of each unit's summed gradient, clipped as one (the count returned is then of units).

    With a single ``max_grad_norm`` the norm is taken over all layers together (flat clipping);
    with a bound per layer name, each layer's part of the gradient is clipped to its own bound
    (per-layer clipping). ``clipping`` picks each layer's strategy as in :func:`strategy_for`.
    Returns the sums by layer name and parameter name, the number of samples seen, and (on
    request) the unclipped sums.
    """
    prepared: dict[str, tuple[Any, Any]] = {}
    for name, layer_traces in traces.items():
        layer = layers[name]
        if len(layer_traces) == 1 and layer_traces[0].prepared is not None:
            # Prepared as its gradient arrived (per unit when the caller grouped the batch).
            prepared[name] = layer_traces[0].prepared
        elif groups is not None:
            prepared[name] = prepare_for_units(layer, layer_traces, groups, clipping)
        elif len(layer_traces) == 1:
            strategy = strategy_for(layer, clipping)
            prepared[name] = (strategy, strategy.prepare(layer, layer_traces[0]))
        elif any(t.prepared is not None for t in layer_traces):
            raise ConfigError(
                f"Layer '{name}' holds gradients of several backward passes; call accumulate() "
                "after each physical batch's backward pass."
            )
        else:
            # A layer called several times per forward: its per-sample gradient is the sum of
            # its calls' contributions, so materialise and add them.
            parts = [_GENERIC.prepare(layer, t) for t in layer_traces]
            prepared[name] = (_GENERIC, {k: sum(p[k] for p in parts) for k in parts[0]})
    if not prepared:
        return {}, 0, None
    # The strategies see the loss's output gradients; a trace's scale turns them into each
    # sample's own (for a mean loss), so norms grow by the scale and the sums by the scale.
    scales = {name: layer_traces[0].scale for name, layer_traces in traces.items()}
    norms_sq = {name: strategy.squared_norms(state) for name, (strategy, state) in prepared.items()}
    sizes = {n.shape[0] for n in norms_sq.values()}
    if len(sizes) != 1:
        raise ConfigError(
            f"Layers saw different batch sizes {sorted(sizes)}; per-sample clipping needs every "
            "layer to take the batch in its first dimension."
        )
    if isinstance(max_grad_norm, dict):
        weights = {
            name: (max_grad_norm[name] / (n.sqrt() * scales[name] + 1e-6)).clamp(max=1.0)
            * scales[name]
            for name, n in norms_sq.items()
        }
    else:
        if len(set(scales.values())) == 1:
            scale = next(iter(scales.values()))
            total = torch.stack(list(norms_sq.values())).sum(0).sqrt() * scale
        else:
            total = sum(n * scales[name] ** 2 for name, n in norms_sq.items()).sqrt()
        flat = (max_grad_norm / (total + 1e-6)).clamp(max=1.0)
        weights = {name: flat * scales[name] for name in norms_sq}
    sums = {
        name: strategy.weighted_sum(state, weights[name])
        for name, (strategy, state) in prepared.items()
    }
    unclipped = None
    if with_unclipped:
        unclipped = {
            name: strategy.weighted_sum(state, torch.full_like(weights[name], scales[name]))
            for name, (strategy, state) in prepared.items()
        }
    return sums, sizes.pop(), unclipped
