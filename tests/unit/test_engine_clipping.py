"""Clipped per-sample gradient sums against a per-example loop and against Opacus."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tests.engine_reference import ours_clipped_sum, reference_clipped_sum, seeded_optimizer


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 3),
    )


SHAPES = {"mlp": (mlp, (6,)), "cnn": (cnn, (1, 8, 8))}


def opacus_clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float) -> dict:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer as OpacusDPOptimizer

    gsm = GradSampleModule(model, loss_reduction="mean")
    opt = OpacusDPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=1,
        loss_reduction="sum",
    )
    opt.zero_grad()
    nn.functional.cross_entropy(gsm(x), y).backward()
    opt.pre_step()
    out = {n.removeprefix("_module."): p.grad.detach().clone() for n, p in gsm.named_parameters()}
    gsm._close()
    return out


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(sorted(SHAPES)),
    batch=st.integers(min_value=1, max_value=24),
    clip=st.sampled_from([1e-3, 0.1, 1.0, 1e3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_clipped_sum_equals_per_example_loop(kind: str, batch: int, clip: float, seed: int) -> None:
    torch.manual_seed(seed)
    build, shape = SHAPES[kind]
    model = build()
    x = torch.randn(batch, *shape) * 3
    y = torch.randint(0, 3, (batch,))
    expected = reference_clipped_sum(model, x, y, clip)
    got = ours_clipped_sum(model, x, y, clip)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize("clip", [0.05, 10.0])
def test_clipped_sum_equals_opacus(kind: str, clip: float) -> None:
    torch.manual_seed(1)
    build, shape = SHAPES[kind]
    model = build()
    x, y = torch.randn(32, *shape), torch.randint(0, 3, (32,))
    ours = ours_clipped_sum(model, x, y, clip)
    theirs = opacus_clipped_sum(model, x, y, clip)
    assert set(ours) == set(theirs)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5)


class Shared(nn.Module):
    """One Linear layer applied twice: its per-sample gradient is the sum of both uses."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


def test_layer_used_twice_matches_reference() -> None:
    torch.manual_seed(3)
    model = Shared()
    x, y = torch.randn(10, 5) * 2, torch.randint(0, 2, (10,))
    expected = reference_clipped_sum(model, x, y, 0.3)
    got = ours_clipped_sum(model, x, y, 0.3)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5)


def test_physical_batches_accumulate_to_the_logical_batch() -> None:
    torch.manual_seed(4)
    model = mlp()
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    expected = reference_clipped_sum(model, x, y, 0.5)
    opt = seeded_optimizer(
        model,
        noise_multiplier=0.0,
        max_grad_norm=0.5,
        expected_batch_size=1.0,
        sample_rate=0.5,
    )
    for part in (slice(0, 7), slice(7, 8), slice(8, 20)):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[part]), y[part]).backward()
        opt.accumulate()
    opt.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-5, rtol=1e-5)
