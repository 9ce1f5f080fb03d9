"""Fast clipping strategies: per-sample norms and clipped sums from the layer's inputs and output
gradients, without ``torch.func`` and, where cheaper, without materialising per-sample gradients.

Linear and convolution layers use the ghost-norm identity of Li et al. (2022): for a sample with
activations A (T x d_in) and output gradients G (T x d_out), the weight gradient is GᵀA and
||GᵀA||² = <AAᵀ, GGᵀ>, which costs T²(d_in + d_out) instead of T·d_in·d_out; the cheaper of the
two is chosen per call. The clipped sum is one weighted matrix product: Σ_i c_i G_iᵀA_i.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from securetrain.engine.clipping import LayerTrace, register_clipping

Prepared = tuple[nn.Module, torch.Tensor, torch.Tensor]


def _sequence(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape to (B, T, d): every non-batch, non-feature dimension becomes a token axis."""
    b, t = a.shape[0], math.prod(a.shape[1:-1])
    return a.reshape(b, t, a.shape[-1]), g.reshape(b, t, g.shape[-1])


def _weight_norms_sq(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """||G_iᵀA_i||² per sample, by the cheaper of the ghost identity and materialisation."""
    _, t, d_in = a.shape
    d_out = g.shape[-1]
    if t == 1:
        return a.squeeze(1).pow(2).sum(1) * g.squeeze(1).pow(2).sum(1)
    if t * t * (d_in + d_out) < t * d_in * d_out:
        return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    return torch.bmm(g.transpose(1, 2), a).pow(2).sum((1, 2))


@register_clipping(nn.Linear)
class LinearStrategy:
    def prepare(self, module: nn.Module, trace: LayerTrace) -> Prepared:
        a, g = _sequence(trace.inputs[0].to(trace.backprops.dtype), trace.backprops)
        return module, a, g

    def squared_norms(self, prepared: Prepared) -> torch.Tensor:
        module, a, g = prepared
        norms = _weight_norms_sq(a, g) if module.weight.requires_grad else a.new_zeros(a.shape[0])
        if module.bias is not None and module.bias.requires_grad:
            norms = norms + g.sum(1).pow(2).sum(1)
        return norms

    def weighted_sum(self, prepared: Prepared, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        module, a, g = prepared
        gw = g * weights[:, None, None]
        out = {}
        if module.weight.requires_grad:
            out["weight"] = torch.einsum("bto,bti->oi", gw, a)
        if module.bias is not None and module.bias.requires_grad:
            out["bias"] = gw.sum((0, 1))
        return out


def _unfold(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Columns of a convolution's input, (B, L, C_in/groups·k…), for groups == 1."""
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, stride, padding, dilation = (
            (1, *module.kernel_size),
            (1, *module.stride),
            (0, *module.padding),
            (1, *module.dilation),
        )
    else:
        kernel, stride, padding, dilation = (
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
        )
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2)


@register_clipping(nn.Conv1d, nn.Conv2d)
class ConvStrategy:
    """Convolutions as matrix products over unfolded input patches (groups = 1, zero padding)."""

    def prepare(self, module: nn.Module, trace: LayerTrace) -> Prepared:
        conv = module
        assert isinstance(conv, (nn.Conv1d, nn.Conv2d))
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            from securetrain.engine.clipping import GenericStrategy

            return (conv, GenericStrategy().prepare(conv, trace), None)  # type: ignore[return-value]
        a = _unfold(conv, trace.inputs[0].to(trace.backprops.dtype))
        gb = trace.backprops
        g = gb.reshape(gb.shape[0], gb.shape[1], math.prod(gb.shape[2:])).transpose(1, 2)
        return conv, a, g

    def squared_norms(self, prepared: Prepared) -> torch.Tensor:
        module, a, g = prepared
        if g is None:  # generic fallback for grouped or non-zero-padded convolutions
            return sum(v.flatten(1).pow(2).sum(1) for v in a.values())  # type: ignore[union-attr]
        norms = _weight_norms_sq(a, g)
        if module.bias is not None:
            norms = norms + g.sum(1).pow(2).sum(1)
        return norms

    def weighted_sum(self, prepared: Prepared, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        module, a, g = prepared
        if g is None:
            return {n: torch.tensordot(weights, v, dims=1) for n, v in a.items()}  # type: ignore[union-attr]
        gw = g * weights[:, None, None]
        out = {"weight": torch.einsum("blo,bli->oi", gw, a).reshape(module.weight.shape)}
        if module.bias is not None:
            out["bias"] = gw.sum((0, 1))
        return out


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
        return sum(v.flatten(1).pow(2).sum(1) for v in prepared.values())

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
    ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        x = trace.inputs[0]
        idx = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        g = trace.backprops.reshape(idx.shape[0], idx.shape[1], trace.backprops.shape[-1])
        return module, idx, g

    def squared_norms(self, prepared: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        module, idx, g = prepared
        same = (idx[:, :, None] == idx[:, None, :]).to(g.dtype)
        if module.padding_idx is not None:
            keep = (idx != module.padding_idx).to(g.dtype)
            same = same * keep[:, :, None] * keep[:, None, :]
        return (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))

    def weighted_sum(
        self, prepared: tuple[nn.Module, torch.Tensor, torch.Tensor], weights: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        module, idx, g = prepared
        assert isinstance(module, nn.Embedding)
        gw = (g * weights[:, None, None]).reshape(-1, g.shape[-1])
        flat = idx.reshape(-1)
        if module.padding_idx is not None:
            keep = flat != module.padding_idx
            flat, gw = flat[keep], gw[keep]
        out = torch.zeros_like(module.weight)
        out.index_add_(0, flat, gw.to(out.dtype))
        return {"weight": out}
