"""The DP-SGD optimizer: per-sample clipping, Gaussian noise, then the wrapped optimizer's step."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

from securetrain.engine.clipping import (
    CLIPPING_CHOICES,
    CLIPPING_MODES,
    Clipping,
    ClippingMode,
    Grouping,
    LayerTrace,
    Sums,
    clipped_sums,
    has_fast_strategy,
    own_parameters,
    prepare_for_units,
    strategy_for,
)
from securetrain.engine.noise import KeystreamGenerator, check_generator, gaussian_noise
from securetrain.engine.tracer import GradientTracer, check_per_sample
from securetrain.errors import ConfigError, UnsupportedModelError
from securetrain.privacy.accounting import compute_epsilon
from securetrain.privacy.events import PoissonGaussianEvent

_log = logging.getLogger("securetrain.engine")


def check_privacy_parameters(
    *,
    noise_multiplier: float = 0.0,
    max_grad_norm: float = 1.0,
    sample_rate: float | None = None,
) -> None:
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise ConfigError(f"Noise multiplier must be >= 0. Found {noise_multiplier}.")
    if not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
        raise ConfigError(f"Max grad norm must be > 0. Found {max_grad_norm}.")
    if sample_rate is not None and not (0 < sample_rate <= 1):
        raise ConfigError(f"Sampling rate must be in (0, 1]. Found {sample_rate}.")


def layer_bounds(max_grad_norm: float | dict[str, float], layers: list[str]) -> dict[str, float]:
    """Per-layer clipping bounds: as given by layer name, or one total bound split equally."""
    if not isinstance(max_grad_norm, dict):
        check_privacy_parameters(max_grad_norm=max_grad_norm)
        return dict.fromkeys(layers, float(max_grad_norm) / math.sqrt(len(layers)))
    unknown = sorted(set(max_grad_norm) - set(layers))
    missing = sorted(set(layers) - set(max_grad_norm))
    if unknown or missing:
        raise ConfigError(
            "Per-layer bounds must name every layer with trainable parameters "
            f"({', '.join(layers)}). Found unknown {unknown}, missing {missing}."
        )
    for name, bound in max_grad_norm.items():
        if not (bound > 0 and math.isfinite(bound)):
            raise ConfigError(f"Max grad norm of layer '{name}' must be > 0. Found {bound}.")
    return {name: float(max_grad_norm[name]) for name in layers}


def _foreign_parameters(
    optimizer: torch.optim.Optimizer, module: nn.Module, *, with_gradient: bool
) -> list[str]:
    """The optimizer's trainable parameters (or, with ``with_gradient``, those holding a
    gradient) that are not the module's, each described by its place in the param groups, its
    shape and (when the optimizer knows it) its name."""
    own = {id(p) for p in module.parameters()}
    found = []
    for g, group in enumerate(optimizer.param_groups):
        names = group.get("param_names", [])
        for i, p in enumerate(group["params"]):
            if id(p) in own or not (p.grad is not None if with_gradient else p.requires_grad):
                continue
            name = f"'{names[i]}' " if i < len(names) else ""
            found.append(f"{name}(group {g}, position {i}, shape {tuple(p.shape)})")
    return found


def check_optimizer_parameters(optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
    """Refuse an optimizer that would train parameters outside ``module``: DP-SGD neither clips
    nor noises their gradients, so the raw gradients of the batch would be released."""
    foreign = _foreign_parameters(optimizer, module, with_gradient=False)
    if foreign:
        raise ConfigError(
            "The optimizer holds trainable parameters that are not in the module, which would "
            "train on raw, unclipped, noise-free gradients; pass only the module's parameters. "
            f"Found {', '.join(foreign)}."
        )


class DPOptimizer:
    """Wraps a PyTorch optimizer so that ``step()`` performs one DP-SGD step.

    ``step()`` clips each sample's gradient to ``max_grad_norm``, sums them, adds Gaussian noise
    of standard deviation ``noise_multiplier * max_grad_norm`` to every trainable parameter, and
    divides by ``expected_batch_size`` (sample rate times dataset size; never the realised batch
    size, which would leak it). Then the wrapped optimizer steps. Noise comes from
    ``generator`` (from :func:`~securetrain.engine.make_generator`); ``secure_rng`` must say
    whether it is keyed from OS entropy. The wrapped optimizer may hold only ``module``'s
    parameters: any other trainable one would train on raw gradients, so it is refused.

    Call :meth:`backward` with the loss instead of ``loss.backward()``: it takes one backward
    pass to the layer outputs only, which is all per-sample clipping needs, and skips the
    parameter gradients that the step would discard. ``loss.backward()`` also works (slower).

    ``clipping_mode="per_layer"`` clips each layer's part of a sample's gradient to its own bound:
    ``max_grad_norm`` is then a bound per layer name, or one total bound split equally over the
    layers. Either way the sensitivity, and so the noise scale, is the root sum of squares of the
    layer bounds, and :attr:`max_grad_norm` reports it.

    For logical batches too large for memory, call :meth:`accumulate` after each physical
    batch's backward pass; :meth:`step` then ends the logical batch.

    ``per_unit=True`` clips per privacy unit (a patient, a customer) instead of per row: each
    :meth:`backward` names the unit of every row (``units=``), a unit's rows' summed gradient is
    clipped as one, ``expected_batch_size`` counts units, and a unit may not appear in two
    physical batches of one logical batch (its contribution would be bounded twice).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        module: nn.Module,
        noise_multiplier: float,
        max_grad_norm: float | dict[str, float],
        expected_batch_size: float,
        sample_rate: float,
        generator: KeystreamGenerator,
        secure_rng: bool,
        loss_reduction: str = "mean",
        clipping: Clipping = "auto",
        clipping_mode: ClippingMode = "flat",
        per_unit: bool = False,
    ) -> None:
        if clipping not in CLIPPING_CHOICES:
            raise ConfigError(
                f"Clipping must be one of {', '.join(CLIPPING_CHOICES)}. Found {clipping!r}."
            )
        if clipping_mode not in CLIPPING_MODES:
            raise ConfigError(
                f"Clipping mode must be one of {', '.join(CLIPPING_MODES)}. "
                f"Found {clipping_mode!r}."
            )
        check_per_sample(module)
        layers = {name: sub for name, sub in module.named_modules() if own_parameters(sub)}
        self._bounds: float | dict[str, float]
        if clipping_mode == "per_layer":
            self._bounds = layer_bounds(max_grad_norm, list(layers))
            total = math.sqrt(sum(b * b for b in self._bounds.values()))
        elif isinstance(max_grad_norm, dict):
            raise ConfigError("A bound per layer needs clipping_mode='per_layer'.")
        else:
            self._bounds = total = float(max_grad_norm)
        check_privacy_parameters(
            noise_multiplier=noise_multiplier, max_grad_norm=total, sample_rate=sample_rate
        )
        if not expected_batch_size > 0:
            raise ConfigError(f"Expected batch size must be > 0. Found {expected_batch_size}.")
        check_generator(generator, secure=secure_rng)
        check_optimizer_parameters(optimizer, module)
        slow = {n: type(m).__name__ for n, m in layers.items() if not has_fast_strategy(m)}
        if clipping == "fast" and slow:
            name, kind = next(iter(slow.items()))
            raise UnsupportedModelError(
                f"clipping='fast' but layer '{name}' ({kind}) has no fast strategy; "
                "use clipping='auto' to fall back to the generic torch.func path for it."
            )
        if clipping == "auto" and slow:
            _log.info(
                "generic (torch.func) per-sample clipping for: %s",
                ", ".join(f"{n} ({k})" for n, k in slow.items()),
            )
        self.original_optimizer = optimizer
        self.module = module
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = total
        self.expected_batch_size = float(expected_batch_size)
        self.sample_rate = float(sample_rate)
        self.generator = generator
        self.secure_rng = secure_rng
        self.steps = 0
        self.clipping = clipping
        self.clipping_mode = clipping_mode
        self.tracer = GradientTracer(
            module, loss_reduction=loss_reduction, prepare=self._prepare_layer
        )
        self._params: dict[tuple[str, str], nn.Parameter] = {
            (layer_name, pname): p
            for layer_name, layer in layers.items()
            for pname, p in own_parameters(layer).items()
        }
        self._summed: dict[tuple[str, str], torch.Tensor] = {}
        self.samples_in_batch = 0
        self._verified = False
        self.per_unit = per_unit
        self._groups: Grouping | None = None
        self._units_in_batch: set[int] = set()

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.original_optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.original_optimizer.state

    def state_dict(self) -> dict[str, Any]:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.original_optimizer.load_state_dict(state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear ``.grad`` and the recorded traces; clipped sums banked by accumulate() stay."""
        self.original_optimizer.zero_grad(set_to_none=set_to_none)
        self.tracer.clear()
        self._groups = None

    def _prepare_layer(self, name: str, trace: LayerTrace) -> tuple[Any, object]:
        layer = self.tracer.layers[name]
        if self._groups is not None:
            return prepare_for_units(layer, [trace], self._groups, self.clipping)
        strategy = strategy_for(layer, self.clipping)
        return strategy, strategy.prepare(layer, trace)

    def _group(self, units: torch.Tensor | None) -> None:
        """Group this backward pass's rows by unit (``per_unit``), refusing a unit seen before
        in this logical batch."""
        if not self.per_unit:
            if units is not None:
                raise ConfigError("units= needs a DPOptimizer made with per_unit=True.")
            return
        if units is None:
            raise ConfigError("A per-unit DPOptimizer needs units= on every backward() call.")
        groups = Grouping.of(units)
        labels = set(units.tolist())
        repeated = labels & self._units_in_batch
        if repeated:
            raise ConfigError(
                "A unit's rows must all be in one physical batch of a logical batch. Found unit "
                f"{min(repeated)} again."
            )
        self._groups = groups
        self._units_in_batch |= labels

    def backward(self, loss: torch.Tensor, *, units: torch.Tensor | None = None) -> None:
        """Backpropagate ``loss`` to the traced layers' outputs, which is all clipping needs;
        ``units`` names each row's privacy unit (per-unit clipping only).

        The first call also computes the parameter gradients once, to verify the tracing."""
        self._group(units)
        if not (isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() == 1):
            raise ConfigError(
                "backward() needs the scalar loss of a forward pass through the model. Found "
                f"{type(loss).__name__} of shape {tuple(getattr(loss, 'shape', ()))}."
            )
        outputs = self.tracer.awaiting_gradients()
        params = [] if self._verified else list(self._params.values())
        if not outputs and not params:
            return
        edges = [*outputs, *(get_gradient_edge(p) for p in params)]
        grads = torch.autograd.grad(loss, edges, allow_unused=True)
        for p, g in zip(params, grads[len(outputs) :], strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g

    def accumulate(self) -> None:
        """Clip the per-sample gradients of the last backward pass(es) and bank their sum."""
        traces = self.tracer.take()
        groups, self._groups = self._groups, None
        if self.per_unit and groups is None and traces:
            raise ConfigError("A per-unit DPOptimizer takes its gradients from backward(units=).")
        with self.tracer.paused():
            sums, n, unclipped = clipped_sums(
                self.tracer.layers,
                traces,
                self._bounds,
                clipping=self.clipping,
                with_unclipped=not self._verified,
                groups=groups,
            )
        rows = n if groups is None else int(groups.unit.shape[0])
        if unclipped is not None and rows > 0:
            self._verify_tracing(unclipped, rows)
        for layer_name, by_param in sums.items():
            for pname, g in by_param.items():
                key = (layer_name, pname)
                self._summed[key] = self._summed[key] + g if key in self._summed else g
        self.samples_in_batch += n

    def _verify_tracing(self, unclipped: Sums, n: int) -> None:
        """Once, on the first non-empty batch: the traced per-sample gradients must add up to
        autograd's gradient. If a parameter is also used outside its layer's call, they do not,
        and per-sample clipping would be wrong: refuse instead of training on a wrong gradient."""
        scale = n if self.tracer.loss_reduction == "mean" else 1
        for (layer_name, pname), p in self._params.items():
            if p.grad is None:
                continue
            traced = unclipped.get(layer_name, {}).get(pname)
            expected = p.grad.detach() * scale
            if traced is None or not torch.allclose(
                traced, expected, rtol=1e-3, atol=1e-5 * (1 + expected.abs().max().item())
            ):
                raise UnsupportedModelError(
                    f"Parameter '{layer_name}.{pname}' is used outside its layer's forward call, so "
                    "its per-sample gradients cannot be traced; use it only inside one module's forward()."
                )
        self._verified = True

    def _check_coverage(self) -> None:
        for (layer_name, pname), p in self._params.items():
            if p.grad is not None and (layer_name, pname) not in self._summed:
                raise ConfigError(
                    f"Parameter '{layer_name}.{pname}' received a gradient that per-sample "
                    "tracing did not see; call the layer as a module in forward()."
                )

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One DP-SGD step over the logical batch (all physical batches accumulated)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.accumulate()
        self._check_coverage()
        foreign = _foreign_parameters(self.original_optimizer, self.module, with_gradient=True)
        if foreign:
            raise ConfigError(
                "Parameters outside the module have gradients in the optimizer, which would "
                f"train on them unclipped and without noise. Found {', '.join(foreign)}."
            )
        std = self.noise_multiplier * self.max_grad_norm
        for key, p in self._params.items():
            summed = self._summed.get(key)
            if summed is None:
                summed = torch.zeros_like(p)
            noisy = gaussian_noise(summed, std, self.generator).add_(summed) if std > 0 else summed
            p.grad = noisy.div_(self.expected_batch_size).to(p.dtype)
        self.original_optimizer.step()
        self._summed.clear()
        self.samples_in_batch = 0
        self._units_in_batch.clear()
        self.steps += 1
        return loss

    @property
    def events(self) -> list[PoissonGaussianEvent]:
        """The DP events of the steps taken so far (empty before the first step)."""
        if self.steps == 0 or self.noise_multiplier == 0:
            return []
        return [PoissonGaussianEvent(self.sample_rate, self.noise_multiplier, self.steps)]

    def epsilon(self, delta: float, *, accountant: str = "pld") -> float:
        """Epsilon spent so far at ``delta``; infinite without noise."""
        if self.steps and self.noise_multiplier == 0:
            return math.inf
        return compute_epsilon(self.events, delta=delta, accountant=accountant)

    def detach(self) -> None:
        """Remove the tracing hooks from the module."""
        self.tracer.remove()
