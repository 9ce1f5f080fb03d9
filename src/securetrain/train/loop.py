"""The training loops: DP-SGD over Poisson-sampled batches, and ordinary training for a
``--no-dp`` baseline."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from securetrain.engine import DPOptimizer, make_generator, split_physical
from securetrain.engine.sampling import PoissonBatchSampler
from securetrain.privacy import Event, compute_epsilon
from securetrain.train.checkpoint import TrainingState
from securetrain.train.config import Hyperparameters
from securetrain.train.plan import DPPlan


@dataclass
class StepInfo:
    step: int
    steps: int
    loss: float
    epsilon: float | None


ProgressCallback = Callable[[StepInfo], None]


def make_optimizer(model: nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    if hp.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=hp.lr)
    return torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=0.9)


def train_dp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dp: DPPlan,
    hp: Hyperparameters,
    fixed_events: list[Event],
    seed: int | None,
    accountant: str,
    max_physical_batch_size: int,
    progress: ProgressCallback | None,
    resume: TrainingState | None = None,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[TrainingState], None] | None = None,
) -> DPOptimizer:
    """DP-SGD with ``dp``'s sample rate, steps and noise, from step 0 or from ``resume``;
    ``on_checkpoint`` gets the state every ``checkpoint_every`` steps. ``fixed_events`` (the
    run's other releases) only enter the ε that ``progress`` reports."""
    generator, secure = make_generator(seed)
    base = make_optimizer(model, hp)
    start = 0
    if resume is not None:
        model.load_state_dict(resume.model)
        base.load_state_dict(resume.optimizer)
        generator.set_state(resume.rng_state)
        secure, start = generator.secure, resume.step
    optimizer = DPOptimizer(
        base,
        module=model,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=hp.max_grad_norm,
        expected_batch_size=dp.expected_batch_size,
        sample_rate=dp.sample_rate,
        generator=generator,
        secure_rng=secure,
    )
    optimizer.steps = start
    loss_fn = nn.CrossEntropyLoss()
    sampler = PoissonBatchSampler(
        len(y), sample_rate=dp.sample_rate, steps=dp.steps - start, generator=generator
    )
    report_every = max(1, dp.steps // 25)
    epsilon: float | None = None
    model.train()
    for step, indices in enumerate(sampler, start=start + 1):
        optimizer.zero_grad()
        total_loss, seen = 0.0, 0
        for chunk in split_physical(indices, max_physical_batch_size):
            if not len(chunk):
                continue
            idx = torch.tensor(chunk, dtype=torch.long)
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.backward(loss)
            optimizer.accumulate()
            total_loss += loss.item() * len(chunk)
            seen += len(chunk)
        optimizer.step()
        if on_checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
            on_checkpoint(
                TrainingState(
                    step, model.state_dict(), base.state_dict(), generator.get_state(), secure
                )
            )
        if progress is not None:
            if step % report_every == 0 or step == dp.steps:
                events = [*fixed_events, *optimizer.events]
                epsilon = compute_epsilon(events, delta=dp.accounting_delta, accountant=accountant)
            progress(StepInfo(step, dp.steps, total_loss / seen if seen else math.nan, epsilon))
    optimizer.detach()
    return optimizer


def train_plain(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hp: Hyperparameters,
    seed: int | None,
    progress: ProgressCallback | None,
) -> int:
    """Ordinary shuffled mini-batch training (no DP guarantee); returns the number of steps."""
    generator, _ = make_generator(seed)
    optimizer = make_optimizer(model, hp)
    loss_fn = nn.CrossEntropyLoss()
    per_epoch = max(1, math.ceil(len(y) / hp.batch_size))
    steps = hp.epochs * per_epoch
    model.train()
    step = 0
    for _ in range(hp.epochs):
        order = generator.randperm(len(y))
        for b in range(per_epoch):
            idx = order[b * hp.batch_size : (b + 1) * hp.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            step += 1
            if progress is not None:
                progress(StepInfo(step, steps, loss.item(), None))
    return steps


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hp: Hyperparameters,
    dp: DPPlan | None,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    accountant: str = "pld",
    max_physical_batch_size: int = 512,
) -> nn.Module:
    """Train ``model`` on ``(x, y)`` with a run's settings: DP-SGD with ``dp`` (the same sample
    rate, steps and noise), or ordinary training without it. No ledger, no checkpoints."""
    if dp is None:
        train_plain(model, x, y, hp=hp, seed=seed, progress=progress)
    else:
        train_dp(
            model,
            x,
            y,
            dp=dp,
            hp=hp,
            fixed_events=[],
            seed=seed,
            accountant=accountant,
            max_physical_batch_size=max_physical_batch_size,
            progress=progress,
        )
    model.eval()
    return model
