"""make_private: the Opacus-style entry point, and what it refuses."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import securetrain
from securetrain.errors import ConfigError, UnsupportedModelError


def _setup(model: nn.Module | None = None, n: int = 100, batch: int = 10):
    model = model or nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    data = TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,)))
    return model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(data, batch_size=batch)


@pytest.mark.parametrize(
    "layer", [nn.BatchNorm1d(8), nn.SyncBatchNorm(8)], ids=["BatchNorm1d", "SyncBatchNorm"]
)
def test_refuses_batchnorm_and_suggests_groupnorm(layer: nn.Module) -> None:
    model, opt, loader = _setup(nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 2)))
    with pytest.raises(UnsupportedModelError, match=r"Layer '1' is .*BatchNorm.*use GroupNorm"):
        securetrain.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
        )


@pytest.mark.parametrize(
    ("sigma", "clip", "message"),
    [
        (-0.1, 1.0, "Noise multiplier must be >= 0. Found -0.1."),
        (1.0, 0.0, "Max grad norm must be > 0. Found 0.0."),
        (1.0, -2.0, "Max grad norm must be > 0. Found -2.0."),
        (math.nan, 1.0, "Noise multiplier must be >= 0. Found nan."),
    ],
)
def test_refuses_invalid_privacy_parameters(sigma: float, clip: float, message: str) -> None:
    model, opt, loader = _setup()
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        securetrain.make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=clip,
        )


@pytest.mark.parametrize("q", [0.0, -0.5, 1.0001])
def test_optimizer_refuses_sample_rate_outside_unit_interval(q: float) -> None:
    model, opt, _ = _setup()
    with pytest.raises(ConfigError, match=f"Sampling rate must be in \\(0, 1\\]. Found {q}"):
        securetrain.DPOptimizer(
            opt,
            module=model,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=10,
            sample_rate=q,
            generator=torch.Generator(),
            secure_rng=True,
        )


def test_ordinary_loop_runs_dp_sgd_and_reports_epsilon() -> None:
    model, opt, loader = _setup(n=200, batch=20)
    model, opt, loader = securetrain.make_private_with_epsilon(
        module=model,
        optimizer=opt,
        data_loader=loader,
        target_epsilon=2.0,
        target_delta=1e-5,
        epochs=3,
        max_grad_norm=1.0,
    )
    assert opt.sample_rate == pytest.approx(0.1)
    before = [p.detach().clone() for p in model.parameters()]
    sizes = []
    for _ in range(3):
        for x, y in loader:
            sizes.append(len(x))
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert len(sizes) == 30 and len(set(sizes)) > 1  # Poisson: variable batch sizes
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    eps = opt.epsilon(1e-5)
    assert 1.98 <= eps <= 2.0
    assert opt.secure_rng


def test_epsilon_grows_with_steps_and_is_infinite_without_noise() -> None:
    model, opt, loader = _setup()
    model, opt, loader = securetrain.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    assert opt.epsilon(1e-5) == 0.0
    eps = []
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        eps.append(opt.epsilon(1e-5))
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False))
    model2, opt2, loader2 = _setup()
    _, opt2, _ = securetrain.make_private(
        module=model2, optimizer=opt2, data_loader=loader2, noise_multiplier=0.0, max_grad_norm=1.0
    )
    x, y = next(iter(loader2))
    nn.functional.cross_entropy(model2(x), y).backward()
    opt2.step()
    assert opt2.epsilon(1e-5) == math.inf


def test_a_parameter_used_outside_its_layer_call_is_refused_not_silently_wrong() -> None:
    class Sneaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + x[:, :2] @ self.lin.weight[:, :2].T

    model, opt, loader = _setup(Sneaky())
    _, opt, _ = securetrain.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    x, y = next(iter(loader))
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(UnsupportedModelError, match="Parameter 'lin.weight' is used outside"):
        opt.step()


def _make_private(model: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader):
    return securetrain.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
    )


def test_refuses_an_optimizer_holding_trainable_parameters_outside_the_module() -> None:
    model, _, loader = _setup()
    head = nn.Parameter(torch.zeros(3, 4))
    named = torch.optim.SGD([*model.named_parameters(), ("head.weight", head)], lr=0.1)
    with pytest.raises(
        ConfigError,
        match=r"not in the module.*Found 'head\.weight' \(group 0, position 4, shape \(3, 4\)\)\.",
    ):
        _make_private(model, named, loader)
    extra = nn.Parameter(torch.zeros(5))
    groups = torch.optim.SGD([{"params": model.parameters()}, {"params": [extra, head]}], lr=0.1)
    with pytest.raises(
        ConfigError,
        match=r"Found \(group 1, position 0, shape \(5,\)\), \(group 1, position 1, shape \(3, 4\)\)\.",
    ):
        securetrain.DPOptimizer(
            groups,
            module=model,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=10,
            sample_rate=0.1,
            generator=securetrain.engine.make_generator(None)[0],
            secure_rng=True,
        )


def test_a_frozen_foreign_parameter_is_allowed_but_refused_once_it_gets_a_gradient() -> None:
    model, _, loader = _setup()
    frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    opt = torch.optim.SGD([*model.parameters(), frozen], lr=0.1)
    _, dp_opt, dp_loader = _make_private(model, opt, loader)
    x, y = next(iter(dp_loader))
    dp_opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    dp_opt.step()
    assert torch.equal(frozen, torch.ones(2))
    frozen.requires_grad_(True)
    dp_opt.zero_grad()
    (nn.functional.cross_entropy(model(x), y) + frozen.sum()).backward()
    with pytest.raises(
        ConfigError, match=r"outside the module.*Found \(group 0, position 4, shape \(2,\)\)"
    ):
        dp_opt.step()
    assert torch.equal(frozen, torch.ones(2))


def test_refuses_a_dataset_without_a_length() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([(torch.zeros(4), 0)])

    model, opt, _ = _setup()
    with pytest.raises(ConfigError, match=r"with a length \(map-style\)\. Found Stream\."):
        securetrain.make_private(
            module=model,
            optimizer=opt,
            data_loader=DataLoader(Stream()),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )
