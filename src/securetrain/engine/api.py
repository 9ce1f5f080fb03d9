"""``make_private``: turn an ordinary PyTorch training setup into DP-SGD, Opacus-style."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from securetrain.engine.clipping import Clipping, ClippingMode
from securetrain.engine.noise import make_generator
from securetrain.engine.optimizer import DPOptimizer, check_privacy_parameters
from securetrain.engine.sampling import DPDataLoader, dataset_size
from securetrain.errors import ConfigError
from securetrain.privacy.planner import plan_deltas, plan_dp_sgd


def _sampling(data_loader: DataLoader[Any]) -> tuple[int, int, float]:
    n = dataset_size(data_loader.dataset)
    per_epoch = len(data_loader)
    if n < 1 or per_epoch < 1:
        raise ConfigError(f"The data loader must hold at least one record. Found {n}.")
    return n, per_epoch, 1.0 / per_epoch


def make_private(
    *,
    module: nn.Module,
    optimizer: Optimizer,
    data_loader: DataLoader[Any],
    noise_multiplier: float,
    max_grad_norm: float | dict[str, float],
    loss_reduction: str = "mean",
    seed: int | None = None,
    clipping: Clipping = "auto",
    clipping_mode: ClippingMode = "flat",
) -> tuple[nn.Module, DPOptimizer, DPDataLoader]:
    """Make a model, optimizer and data loader train with DP-SGD.

    Each pass over the returned loader draws ``len(data_loader)`` Poisson batches with sample
    rate ``1 / len(data_loader)`` (expected batch size: the original one). The returned optimizer
    clips per-sample gradients to ``max_grad_norm`` and adds Gaussian noise of standard deviation
    ``noise_multiplier * max_grad_norm``. Noise and sampling come from an AES-256-CTR keystream
    keyed from OS entropy unless ``seed`` is given, which makes them predictable
    (``optimizer.secure_rng`` is then False). ``optimizer`` may hold only ``module``'s
    parameters. ``clipping`` and ``clipping_mode`` (with per-layer bounds) are as for
    :class:`DPOptimizer`.
    """
    n, per_epoch, sample_rate = _sampling(data_loader)
    check_privacy_parameters(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    generator, secure = make_generator(seed)
    dp_optimizer = DPOptimizer(
        optimizer,
        module=module,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=sample_rate * n,
        sample_rate=sample_rate,
        generator=generator,
        secure_rng=secure,
        loss_reduction=loss_reduction,
        clipping=clipping,
        clipping_mode=clipping_mode,
    )
    loader = DPDataLoader(
        data_loader.dataset,
        sample_rate=sample_rate,
        steps=per_epoch,
        generator=generator,
        num_workers=data_loader.num_workers,
    )
    return module, dp_optimizer, loader


def make_private_with_epsilon(
    *,
    module: nn.Module,
    optimizer: Optimizer,
    data_loader: DataLoader[Any],
    target_epsilon: float,
    target_delta: float,
    epochs: int,
    max_grad_norm: float | dict[str, float],
    accountant: str = "pld",
    loss_reduction: str = "mean",
    seed: int | None = None,
    clipping: Clipping = "auto",
    clipping_mode: ClippingMode = "flat",
) -> tuple[nn.Module, DPOptimizer, DPDataLoader]:
    """Like :func:`make_private`, with the smallest noise that keeps ``epochs`` passes over the
    loader within ``(target_epsilon, target_delta)``."""
    n, _, sample_rate = _sampling(data_loader)
    sigma = plan_dp_sgd(
        epsilon=target_epsilon,
        n=n,
        epochs=epochs,
        deltas=plan_deltas(n=n, delta=target_delta, selection=False),
        sample_rate=sample_rate,
        accountant=accountant,
    ).noise_multiplier
    return make_private(
        module=module,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=sigma,
        max_grad_norm=max_grad_norm,
        loss_reduction=loss_reduction,
        seed=seed,
        clipping=clipping,
        clipping_mode=clipping_mode,
    )
