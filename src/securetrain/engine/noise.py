"""Random generators for sampling and noise: OS entropy unless a seed is explicitly given."""

from __future__ import annotations

import secrets

import torch


def make_generator(seed: int | None = None) -> tuple[torch.Generator, bool]:
    """A torch generator and whether it is secure (seeded from OS entropy, not from ``seed``)."""
    gen = torch.Generator()
    if seed is None:
        gen.manual_seed(secrets.randbits(63))
        return gen, True
    gen.manual_seed(int(seed))
    return gen, False


def gaussian_noise(like: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Noise N(0, std^2) with the shape, dtype and device of ``like``."""
    noise = torch.normal(0.0, std, size=like.shape, generator=generator, dtype=like.dtype)
    return noise.to(like.device)
