"""The per-example definition of clipped gradient sums, and ours, for the engine's tests."""

import math

import torch
from torch import nn

from securetrain.engine import DPOptimizer, make_generator


def seeded_optimizer(
    model: nn.Module, *, lr: float = 0.0, seed: int = 0, **settings
) -> DPOptimizer:
    """A DPOptimizer over SGD with a seeded generator; ``settings`` override the defaults."""
    gen, _ = make_generator(seed)
    defaults = dict(
        noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=1.0, sample_rate=0.5
    )
    return DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr),
        module=model,
        generator=gen,
        secure_rng=False,
        **(defaults | settings),
    )


def reference_clipped_sum(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float | dict[str, float]
) -> dict:
    """Clip each sample's gradient (flat: one bound; per layer: a bound per layer name)."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = {
            n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
            for n, p in model.named_parameters()
        }
        if isinstance(clip, dict):
            for layer, bound in clip.items():
                names = [n for n in grads if n.rpartition(".")[0] == layer]
                norm = math.sqrt(sum(grads[n].pow(2).sum().item() for n in names))
                for n in names:
                    total[n] += min(1.0, bound / (norm + 1e-6)) * grads[n]
            continue
        factor = min(
            1.0, clip / (math.sqrt(sum(g.pow(2).sum().item() for g in grads.values())) + 1e-6)
        )
        for n in total:
            total[n] += factor * grads[n]
    return total


def ours_clipped_sum(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float | dict[str, float],
    clipping: str = "auto",
    *,
    via: str = "optimizer",
) -> dict:
    """Our clipped sum, with the backward pass taken by the optimizer (to the layer outputs
    only) or by ``loss.backward()``."""
    opt = seeded_optimizer(
        model,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=1.0,
        sample_rate=0.5,
        clipping=clipping,
        clipping_mode="per_layer" if isinstance(clip, dict) else "flat",
    )
    opt.zero_grad()
    out = model(x)
    loss = nn.functional.cross_entropy(out, y) if len(x) else out.sum()
    if via == "optimizer":
        opt.backward(loss)
    else:
        loss.backward()
    opt.step()
    opt.detach()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}
