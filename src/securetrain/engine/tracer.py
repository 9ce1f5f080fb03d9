"""Forward hooks that record, per layer, what per-sample clipping needs from one backward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.nn.modules.batchnorm import _BatchNorm

from securetrain.engine.clipping import LayerTrace, own_parameters
from securetrain.errors import ConfigError, UnsupportedModelError

LOSS_REDUCTIONS = ("mean", "sum")


def check_per_sample(module: nn.Module) -> None:
    """Refuse models whose layers mix samples within a batch: per-sample gradients are undefined."""
    for name, sub in module.named_modules():
        if isinstance(sub, _BatchNorm):
            raise UnsupportedModelError(
                f"Layer '{name or type(sub).__name__}' is {type(sub).__name__}, which mixes samples "
                "in a batch, so per-sample gradients (and DP-SGD) are undefined; use GroupNorm "
                "or LayerNorm instead."
            )
    if not any(p.requires_grad for p in module.parameters()):
        raise ConfigError("The model has no trainable parameters.")


class _Pending:
    __slots__ = ("inputs", "output", "trace", "scale")

    def __init__(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.inputs = inputs
        # Where the output's gradient will arrive: a graph edge, which (unlike the output
        # tensor) holds no activation memory.
        self.output: GradientEdge | None = get_gradient_edge(output)
        self.trace: LayerTrace | None = None  # set when it has
        self.scale = 1.0


Prepare = Callable[[str, LayerTrace], tuple[Any, object]]


class GradientTracer:
    """Records each parametrised layer's inputs and per-sample output gradients.

    ``loss_reduction`` says how the loss was reduced over the batch: with ``"mean"`` the traces
    carry the batch size as the factor that turns output gradients into per-sample ones.

    With ``prepare``, a layer called once in the forward pass is handed to it as soon as its
    output gradient arrives, during the backward pass, and only what it returns is kept: the
    layer's inputs and output gradients can be freed before the backward pass ends.
    """

    def __init__(
        self, module: nn.Module, *, loss_reduction: str = "mean", prepare: Prepare | None = None
    ) -> None:
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ConfigError(f"Loss reduction must be 'mean' or 'sum'. Found {loss_reduction!r}.")
        check_per_sample(module)
        self.loss_reduction = loss_reduction
        self.layers: dict[str, nn.Module] = {
            name: sub for name, sub in module.named_modules() if own_parameters(sub)
        }
        self._pending: dict[str, list[_Pending]] = {name: [] for name in self.layers}
        self._prepare = prepare
        self._paused = False
        self._handles = [
            sub.register_forward_hook(self._make_hook(name)) for name, sub in self.layers.items()
        ]

    def _make_hook(self, name: str) -> Any:
        def hook(layer: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self._paused or not (torch.is_grad_enabled() and layer.training):
                return
            if not isinstance(output, torch.Tensor):
                raise UnsupportedModelError(
                    f"Layer '{name}' ({type(layer).__name__}) returns {type(output).__name__}, not "
                    "a tensor; wrap it in a module that returns one tensor."
                )
            if not all(isinstance(a, torch.Tensor) for a in args):
                raise UnsupportedModelError(
                    f"Layer '{name}' ({type(layer).__name__}) takes non-tensor arguments; "
                    "per-sample gradients need tensor inputs with the batch first."
                )
            if not output.requires_grad:
                return
            entry = _Pending(tuple(a.detach() for a in args), output)
            self._pending[name].append(entry)
            if self.loss_reduction == "mean":
                entry.scale = float(output.shape[0])

            def on_grad(g: torch.Tensor) -> None:
                trace = LayerTrace(entry.inputs, g.detach(), entry.scale)
                entry.output, entry.inputs = None, ()
                if self._prepare is not None and len(self._pending[name]) == 1:
                    with self.paused():
                        prepared = self._prepare(name, trace)
                    trace = LayerTrace((), torch.empty(0), trace.scale, prepared)
                entry.trace = trace

            output.register_hook(on_grad)

        return hook

    def awaiting_gradients(self) -> list[GradientEdge]:
        """The graph edges of the recorded layer outputs whose gradients have not arrived yet."""
        return [
            e.output
            for entries in self._pending.values()
            for e in entries
            if e.trace is None and e.output is not None
        ]

    def take(self) -> dict[str, list[LayerTrace]]:
        """The complete traces since the last call, by layer name; forgets everything recorded."""
        out = {
            name: [e.trace for e in entries if e.trace is not None]
            for name, entries in self._pending.items()
        }
        self.clear()
        return {name: traces for name, traces in out.items() if traces}

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Record nothing inside this block (the strategies call layers themselves)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def clear(self) -> None:
        for entries in self._pending.values():
            entries.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
