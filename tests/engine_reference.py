"""The per-example definition of clipped gradient sums, and ours, for the engine's tests."""

import math

import torch
from torch import nn

from securetrain.engine import DPOptimizer, make_generator


def reference_clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float) -> dict:
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = {
            n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
            for n, p in model.named_parameters()
        }
        factor = min(
            1.0, clip / (math.sqrt(sum(g.pow(2).sum().item() for g in grads.values())) + 1e-6)
        )
        for n in total:
            total[n] += factor * grads[n]
    return total


def ours_clipped_sum(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float, clipping: str = "auto"
) -> dict:
    gen, _ = make_generator(0)
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        module=model,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=1.0,
        sample_rate=0.5,
        generator=gen,
        secure_rng=False,
        clipping=clipping,
    )
    opt.zero_grad()
    out = model(x)
    (nn.functional.cross_entropy(out, y) if len(x) else out.sum()).backward()
    opt.step()
    opt.detach()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}
