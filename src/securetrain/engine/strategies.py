"""Fast clipping strategies: per-sample norms and clipped sums from the layer's inputs and output
gradients, without ``torch.func`` and, where cheaper, without materialising per-sample gradients.

Linear and convolution layers use the ghost-norm identity of Li et al. (2022): for a sample with
activations A (T x d_in) and output gradients G (T x d_out), the weight gradient is GᵀA and
||GᵀA||² = <AAᵀ, GGᵀ>, which costs T²(d_in + d_out) instead of T·d_in·d_out; the cheaper of the
two is chosen per call. The clipped sum is one weighted matrix product: Σ_i c_i G_iᵀA_i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import EllipsisType

import torch
import torch.nn.functional as F
from torch import nn

from securetrain.engine.clipping import GenericStrategy, LayerTrace, register_clipping

_GENERIC = GenericStrategy()

# Unfolded convolution inputs are formed for this many elements at a time, at most, so that
# per-sample clipping never holds a whole batch of unfolded patches.
_CHUNK_ELEMENTS = 1 << 22


def _sequence(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape to (B, T, d): every non-batch, non-feature dimension becomes a token axis."""
    b, t = a.shape[0], math.prod(a.shape[1:-1])
    return a.reshape(b, t, a.shape[-1]), g.reshape(b, t, g.shape[-1])


def _ghost_is_cheaper(t: int, d_in: int, d_out: int) -> bool:
    """Li et al. (2022): the Gram-matrix norm costs T²(d_in + d_out) per sample, materialising
    the per-sample gradient costs T·d_in·d_out."""
    return t * t * (d_in + d_out) < t * d_in * d_out


def _needs(module: nn.Module, name: str) -> bool:
    p = getattr(module, name, None)
    return isinstance(p, torch.Tensor) and p.requires_grad


@dataclass
class Prepared:
    """One layer's per-sample state: squared norms, per-sample bias gradients (B x out), and
    either the per-sample weight gradients (``per_sample``, B x out x in) or what forms the
    weighted sum without them (inputs ``a`` and output gradients ``g``). Nothing else is kept,
    so that the output gradients can be freed as soon as the layer has been prepared."""

    module: nn.Module
    norms: torch.Tensor
    bias: torch.Tensor | None = None
    a: torch.Tensor | None = None
    g: torch.Tensor | None = None
    per_sample: torch.Tensor | None = None
    padding: tuple[int, ...] = ()  # a convolution's zero padding still to apply to ``a``

    def weighted_sums(
        self, weights: torch.Tensor, weight: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The weighted bias sum, and the weight sum: from ``per_sample`` or as given."""
        out = {}
        if self.per_sample is not None:
            weight = torch.tensordot(weights, self.per_sample, dims=1)
        if weight is not None:
            out["weight"] = weight.reshape(self.module.get_parameter("weight").shape)
        if self.bias is not None:
            out["bias"] = weights @ self.bias
        return out


@register_clipping(nn.Linear)
class LinearStrategy:
    def prepare(self, module: nn.Module, trace: LayerTrace) -> Prepared:
        a, g = _sequence(trace.inputs[0].to(trace.backprops.dtype), trace.backprops)
        batch, t, d_in = a.shape
        state = Prepared(module, a.new_zeros(batch))
        if _needs(module, "weight"):
            if t == 1:
                state.norms = a.squeeze(1).pow(2).sum(1) * g.squeeze(1).pow(2).sum(1)
                state.a, state.g = a, g
            elif _ghost_is_cheaper(t, d_in, g.shape[-1]):
                gram = torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))
                state.norms = gram.sum((1, 2))
                state.a, state.g = a, g
            else:
                state.per_sample = torch.bmm(g.transpose(1, 2), a)
                state.norms = state.per_sample.pow(2).sum((1, 2))
        if _needs(module, "bias"):
            state.bias = g.sum(1)
            state.norms = state.norms + state.bias.pow(2).sum(1)
        return state

    def squared_norms(self, prepared: Prepared) -> torch.Tensor:
        return prepared.norms

    def weighted_sum(self, prepared: Prepared, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        weight = None
        if prepared.a is not None and prepared.g is not None:
            g, a = prepared.g, prepared.a
            gw = (g * weights[:, None, None]).reshape(-1, g.shape[-1])
            weight = gw.t() @ a.reshape(-1, a.shape[-1])
        return prepared.weighted_sums(weights, weight)


def _unfold(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor, padding: list[int]) -> torch.Tensor:
    """Input patches of a convolution with groups == 1, (B, C_in·k…, L), gathered by one
    strided copy (faster than ``F.unfold``, which loops over the batch)."""
    nd = x.dim() - 2
    if any(padding):
        x = F.pad(x, [p for p in reversed(padding) for _ in range(2)])
    for i in range(nd):
        span = module.dilation[i] * (module.kernel_size[i] - 1) + 1
        x = x.unfold(2 + i, span, module.stride[i])
    every_dilation: tuple[EllipsisType | slice, ...] = (
        ...,
        *(slice(None, None, d) for d in module.dilation),
    )
    x = x[every_dilation]
    positions = math.prod(x.shape[2 : 2 + nd])
    x = x.permute(0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))
    return x.reshape(x.shape[0], -1, positions)


def _padded(
    conv: nn.Conv1d | nn.Conv2d, padding: tuple[int, ...], x: torch.Tensor
) -> tuple[torch.Tensor, list[int]]:
    """The input with any non-zero padding mode applied, and the zero padding still to apply."""
    if conv.padding_mode == "zeros":
        return x, list(padding)
    pad = [p for p in reversed(padding) for _ in range(2)]
    return F.pad(x, pad, mode=conv.padding_mode), [0] * len(padding)


def _per_sample_by_groups(
    conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor, g: torch.Tensor, padding: list[int]
) -> torch.Tensor:
    """Per-sample weight gradients, (B, C_out, C_in/groups·k…), as the weight gradient of one
    convolution with the batch folded into the channels (one group per sample and group)."""
    batch = x.shape[0]
    weight = conv.weight.detach()
    per = _weight_gradient(
        conv,
        g.reshape(1, batch * g.shape[1], *g.shape[2:]),
        x.reshape(1, batch * x.shape[1], *x.shape[2:]),
        weight.new_empty((batch * weight.shape[0], *weight.shape[1:])),
        padding,
        batch * conv.groups,
    )
    return per.reshape(batch, weight.shape[0], -1)


def _weight_gradient(
    conv: nn.Conv1d | nn.Conv2d,
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    padding: list[int],
    groups: int,
) -> torch.Tensor:
    """The weight gradient of ``conv`` (with this weight shape, padding and groups) alone."""
    # torch.ops is untyped; aten.convolution_backward returns (grad_input, grad_weight, grad_bias)
    grad_weight: torch.Tensor = torch.ops.aten.convolution_backward(
        grad_out,
        x,
        weight,
        None,
        conv.stride,
        padding,
        conv.dilation,
        False,
        [0] * len(padding),
        groups,
        [False, True, False],
    )[1]
    return grad_weight


@register_clipping(nn.Conv1d, nn.Conv2d)
class ConvStrategy:
    """Per-sample convolution gradients without a per-sample loop. By cost (as for Linear):
    ghost norms from the Gram matrices of unfolded input patches, with the clipped sum as one
    weight-gradient convolution; or materialised per-sample gradients, formed by one convolution
    with the batch folded into the groups, or (few input channels over many positions, where
    that is slow) by unfolding. Patches are unfolded a few samples at a time."""

    def prepare(self, module: nn.Module, trace: LayerTrace) -> Prepared | dict[str, torch.Tensor]:
        conv = module
        assert isinstance(conv, (nn.Conv1d, nn.Conv2d))
        if isinstance(conv.padding, str):
            return _GENERIC.prepare(conv, trace)
        x, padding = _padded(conv, conv.padding, trace.inputs[0].to(trace.backprops.dtype))
        g = trace.backprops
        batch, d_out, length = g.shape[0], g.shape[1], math.prod(g.shape[2:])
        d_in = math.prod(conv.weight.shape[1:])
        state = Prepared(conv, g.new_zeros(batch), padding=(*padding,))
        if _needs(conv, "weight"):
            unfoldable = conv.groups == 1
            if unfoldable and _ghost_is_cheaper(length, d_in, d_out):
                state.norms = self._ghost_norms(conv, x, g, padding) if batch else state.norms
                state.a, state.g = x, g
            elif not batch:
                state.per_sample = g.new_zeros((0, d_out, d_in))
            elif unfoldable and conv.in_channels < 4 and length > 256:
                state.per_sample = self._unfolded_per_sample(conv, x, g, padding)
            else:
                state.per_sample = _per_sample_by_groups(conv, x, g, padding)
            if state.per_sample is not None:
                state.norms = state.per_sample.pow(2).sum((1, 2))
        if _needs(conv, "bias"):
            state.bias = g.flatten(2).sum(2)
            state.norms = state.norms + state.bias.pow(2).sum(1)
        return state

    @staticmethod
    def _chunks(batch: int, per_sample_elements: int) -> range:
        return range(0, batch, max(1, _CHUNK_ELEMENTS // per_sample_elements))

    def _ghost_norms(
        self, conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor, g: torch.Tensor, padding: list[int]
    ) -> torch.Tensor:
        g = g.flatten(2)
        length, d_in = g.shape[2], math.prod(conv.weight.shape[1:])
        chunks = self._chunks(g.shape[0], length * (d_in + length))
        step = chunks.step
        norms = []
        for lo in chunks:
            cols = _unfold(conv, x[lo : lo + step], padding)
            gc = g[lo : lo + step]
            gram = torch.bmm(cols.transpose(1, 2), cols)
            norms.append((gram * torch.bmm(gc.transpose(1, 2), gc)).sum((1, 2)))
        return torch.cat(norms)

    def _unfolded_per_sample(
        self, conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor, g: torch.Tensor, padding: list[int]
    ) -> torch.Tensor:
        g = g.flatten(2)
        chunks = self._chunks(g.shape[0], g.shape[2] * math.prod(conv.weight.shape[1:]))
        step = chunks.step
        return torch.cat(
            [
                torch.bmm(
                    g[lo : lo + step], _unfold(conv, x[lo : lo + step], padding).transpose(1, 2)
                )
                for lo in chunks
            ]
        )

    def squared_norms(self, prepared: Prepared | dict[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(prepared, dict):
            return _GENERIC.squared_norms(prepared)
        return prepared.norms

    def weighted_sum(
        self, prepared: Prepared | dict[str, torch.Tensor], weights: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if isinstance(prepared, dict):
            return _GENERIC.weighted_sum(prepared, weights)
        conv = prepared.module
        assert isinstance(conv, (nn.Conv1d, nn.Conv2d))
        weight = None
        if prepared.a is not None and prepared.g is not None:
            g = prepared.g
            weight = _weight_gradient(
                conv,
                g * weights.reshape(-1, *([1] * (g.dim() - 1))),
                prepared.a,
                conv.weight.detach(),
                list(prepared.padding),
                conv.groups,
            )
        return prepared.weighted_sums(weights, weight)


class _AffineNorm:
    """Shared by LayerNorm and GroupNorm: per-sample gradients of the affine parameters are
    small (one value per channel), so they are formed directly from the normalised input."""

    def normalised(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reduce(self, module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, module: nn.Module, trace: LayerTrace) -> dict[str, torch.Tensor]:
        g = trace.backprops
        x_hat = self.normalised(module, trace.inputs[0].to(g.dtype))
        grads = {}
        if getattr(module, "weight", None) is not None:
            grads["weight"] = self.reduce(module, g * x_hat)
        if getattr(module, "bias", None) is not None:
            grads["bias"] = self.reduce(module, g)
        return grads

    def squared_norms(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum((v.flatten(1).pow(2).sum(1) for v in prepared.values()), torch.zeros(()))

    def weighted_sum(
        self, prepared: dict[str, torch.Tensor], weights: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {n: torch.tensordot(weights, v, dims=1) for n, v in prepared.items()}


@register_clipping(nn.LayerNorm)
class LayerNormStrategy(_AffineNorm):
    def normalised(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(module, nn.LayerNorm)
        return F.layer_norm(x, module.normalized_shape, eps=module.eps)

    def reduce(self, module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        assert isinstance(module, nn.LayerNorm)
        k = len(module.normalized_shape)
        return t.sum(tuple(range(1, t.dim() - k))) if t.dim() - k > 1 else t


@register_clipping(nn.GroupNorm)
class GroupNormStrategy(_AffineNorm):
    def normalised(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(module, nn.GroupNorm)
        return F.group_norm(x, module.num_groups, eps=module.eps)

    def reduce(self, module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        return t.sum(tuple(range(2, t.dim()))) if t.dim() > 2 else t


@register_clipping(nn.Embedding)
class EmbeddingStrategy:
    """Per-sample gradients of an embedding touch only the rows of the sample's tokens."""

    def prepare(
        self, module: nn.Module, trace: LayerTrace
    ) -> tuple[nn.Embedding, torch.Tensor, torch.Tensor]:
        assert isinstance(module, nn.Embedding)
        x = trace.inputs[0]
        idx = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        g = trace.backprops.reshape(idx.shape[0], idx.shape[1], trace.backprops.shape[-1])
        return module, idx, g

    def squared_norms(
        self, prepared: tuple[nn.Embedding, torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        module, idx, g = prepared
        same = torch.eq(idx[:, :, None], idx[:, None, :]).to(g.dtype)
        if module.padding_idx is not None:
            keep = (idx != module.padding_idx).to(g.dtype)
            same = same * keep[:, :, None] * keep[:, None, :]
        return (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))

    def weighted_sum(
        self, prepared: tuple[nn.Embedding, torch.Tensor, torch.Tensor], weights: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        module, idx, g = prepared
        gw = (g * weights[:, None, None]).reshape(-1, g.shape[-1])
        flat = idx.reshape(-1)
        if module.padding_idx is not None:
            keep = flat != module.padding_idx
            flat, gw = flat[keep], gw[keep]
        out = torch.zeros_like(module.weight)
        out.index_add_(0, flat, gw.to(out.dtype))
        return {"weight": out}
