"""Fast clipping strategies against the per-example definition, on every registered layer type
and on mixed models, for batch sizes 0 and 1 and clip bounds below and above the norms."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from securetrain.engine import DPOptimizer, make_generator
from securetrain.engine.clipping import CLIPPING_CHOICES, CLIPPING_MODES, has_fast_strategy
from securetrain.errors import ConfigError, UnsupportedModelError
from tests.engine_reference import ours_clipped_sum, reference_clipped_sum, seeded_optimizer


class TinyTransformer(nn.Module):
    """Embedding, LayerNorm, single-head attention from Linear layers, a Linear head."""

    def __init__(self, vocab: int = 11, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Linear(d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.embed(tokens))
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(h.shape[-1]), dim=-1)
        h = self.norm2(h + self.o(att @ self.v(h)))
        h = h + torch.tanh(self.ff(h))
        return self.head(h.mean(1))


MODELS = {
    "linear": (lambda: nn.Linear(6, 3), lambda b: torch.randn(b, 6) * 3),
    "linear-seq": (
        lambda: nn.Sequential(nn.Linear(5, 7), nn.Flatten(), nn.Linear(28, 3)),
        lambda b: torch.randn(b, 4, 5),
    ),
    "mlp": (
        lambda: nn.Sequential(
            nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
        ),
        lambda b: torch.randn(b, 6) * 2,
    ),
    "cnn": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.GroupNorm(2, 4),
            nn.ReLU(),
            nn.Conv2d(4, 8, 3, stride=2),
            nn.Flatten(),
            nn.Linear(8 * 3 * 3, 3),
        ),
        lambda b: torch.randn(b, 1, 8, 8),
    ),
    "conv1d": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 3, 3, padding=2, dilation=2), nn.Flatten(), nn.Linear(30, 3)
        ),
        lambda b: torch.randn(b, 2, 10),
    ),
    "layernorm": (
        lambda: nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3)),
        lambda b: torch.randn(b, 5),
    ),
    "transformer": (TinyTransformer, lambda b: torch.randint(0, 11, (b, 6))),
    # Convolutions the unfolding does not cover: handled per sample by torch.func inside.
    "grouped-circular-conv": (
        lambda: nn.Sequential(
            nn.Conv2d(4, 6, 3, groups=2),
            nn.Conv2d(6, 2, 3, padding=1, padding_mode="circular"),
            nn.Flatten(),
            nn.Linear(2 * 3 * 3, 3),
        ),
        lambda b: torch.randn(b, 4, 5, 5),
    ),
    # Wide layers over few positions, where the ghost (Gram-matrix) norm is the cheaper one.
    "ghost-linear-seq": (
        lambda: nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Flatten(), nn.Linear(90, 3)),
        lambda b: torch.randn(b, 3, 40),
    ),
    "ghost-conv": (
        lambda: nn.Sequential(
            nn.Conv2d(16, 32, 3),
            nn.ReLU(),
            nn.Flatten(2),
            nn.Conv1d(32, 24, 2),
            nn.Flatten(),
            nn.Linear(24, 3),
        ),
        lambda b: torch.randn(b, 16, 3, 4),
    ),
    "embedding-padding": (
        lambda: nn.Sequential(nn.Embedding(9, 4, padding_idx=0), nn.Flatten(), nn.Linear(20, 3)),
        lambda b: torch.randint(0, 9, (b, 5)),
    ),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_layer_in_these_models_has_a_fast_strategy(name: str) -> None:
    build, _ = MODELS[name]
    layers = [m for m in build().modules() if any(True for _ in m.parameters(recurse=False))]
    assert layers and all(has_fast_strategy(m) for m in layers)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(MODELS)),
    batch=st.sampled_from([0, 1, 2, 5, 13]),
    clip=st.sampled_from([1e-3, 0.05, 1.0, 1e4]),
    seed=st.integers(0, 2**31 - 1),
    via=st.sampled_from(["optimizer", "loss"]),
)
def test_fast_clipped_sums_equal_the_per_example_loop(
    name: str, batch: int, clip: float, seed: int, via: str
) -> None:
    torch.manual_seed(seed)
    build, inputs = MODELS[name]
    model = build()
    x, y = inputs(batch), torch.randint(0, 3, (batch,))
    expected = reference_clipped_sum(model, x, y, clip)
    got = ours_clipped_sum(model, x, y, clip, "fast", via=via)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(MODELS)),
    batch=st.sampled_from([0, 1, 4, 9]),
    clip=st.sampled_from([1e-3, 0.1, 1e4]),
    clipping=st.sampled_from(["fast", "generic"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_per_layer_clipping_equals_the_per_example_loop(
    name: str, batch: int, clip: float, clipping: str, seed: int
) -> None:
    torch.manual_seed(seed)
    build, inputs = MODELS[name]
    model = build()
    layers = [n for n, m in model.named_modules() if any(True for _ in m.parameters(False))]
    bounds = {layer: clip * (1 + i) for i, layer in enumerate(layers)}
    x, y = inputs(batch), torch.randint(0, 3, (batch,))
    expected = reference_clipped_sum(model, x, y, bounds)
    got = ours_clipped_sum(model, x, y, bounds, clipping)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], atol=1e-5, rtol=1e-5)


def test_fast_and_generic_train_the_same_model_for_the_same_noise() -> None:
    torch.manual_seed(0)
    x, y = torch.randint(0, 11, (64, 6)), torch.randint(0, 3, (64,))
    results = []
    for mode in ("fast", "generic"):
        torch.manual_seed(1)
        model = TinyTransformer()
        opt = seeded_optimizer(
            model,
            seed=123,
            lr=0.5,
            noise_multiplier=1.0,
            max_grad_norm=0.5,
            expected_batch_size=16,
            sample_rate=0.25,
            clipping=mode,
        )
        for step in range(5):
            idx = torch.arange(step * 12, step * 12 + 12)
            opt.zero_grad()
            opt.backward(nn.functional.cross_entropy(model(x[idx]), y[idx]))
            opt.step()
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for n in results[0]:
        torch.testing.assert_close(results[0][n], results[1][n], atol=1e-5, rtol=1e-5)


def test_fast_mode_refuses_layers_without_a_fast_strategy_and_auto_falls_back() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.PReLU(), nn.Linear(4, 2))
    gen, _ = make_generator(0)
    kwargs = dict(
        module=model,
        noise_multiplier=0.0,
        max_grad_norm=1.0,
        expected_batch_size=1.0,
        sample_rate=0.5,
        generator=gen,
        secure_rng=False,
    )
    with pytest.raises(UnsupportedModelError, match=r"layer '1' \(PReLU\) has no fast strategy"):
        DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), clipping="fast", **kwargs)
    torch.manual_seed(2)
    x, y = torch.randn(7, 4), torch.randint(0, 2, (7,))
    expected = reference_clipped_sum(model, x, y, 0.3)
    got = ours_clipped_sum(model, x, y, 0.3, "auto")
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], atol=1e-5, rtol=1e-5)


def test_linear_fast_path_materialises_no_per_sample_gradients() -> None:
    """With 2-D input the Linear strategy keeps only activations and output gradients: no tensor
    of shape (batch, out, in) is ever allocated."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Inventory(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.shapes: list[tuple[int, ...]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.shapes.append(tuple(t.shape))
            return out

    batch, d_in, d_out = 32, 50, 40
    model = nn.Linear(d_in, d_out)
    opt = seeded_optimizer(
        model,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=32.0,
        sample_rate=0.5,
        clipping="fast",
    )
    x, y = torch.randn(batch, d_in), torch.randint(0, d_out, (batch,))
    for _ in range(2):  # the first step also verifies the tracing; the second is the steady state
        with Inventory() as inventory:
            opt.backward(nn.functional.cross_entropy(model(x), y))
            opt.step()
    assert inventory.shapes, "the step ran no tensor operations"
    per_sample = [
        s
        for s in inventory.shapes
        if len(s) >= 3 and s[0] == batch and math.prod(s[1:]) >= d_in * d_out
    ]
    assert per_sample == []


def test_per_layer_bounds_set_the_sensitivity_and_reject_bad_input() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    gen, _ = make_generator(0)
    kwargs = dict(
        module=model,
        noise_multiplier=1.0,
        expected_batch_size=1.0,
        sample_rate=0.5,
        generator=gen,
        secure_rng=False,
        clipping_mode="per_layer",
    )
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    split = DPOptimizer(sgd, max_grad_norm=2.0, **kwargs)
    assert split._bounds == {
        "0": pytest.approx(2 / math.sqrt(2)),
        "2": pytest.approx(2 / math.sqrt(2)),
    }
    assert split.max_grad_norm == pytest.approx(2.0)
    split.detach()
    named = DPOptimizer(sgd, max_grad_norm={"0": 3.0, "2": 4.0}, **kwargs)
    assert named.max_grad_norm == pytest.approx(5.0)
    named.detach()
    with pytest.raises(ConfigError, match=r"unknown \['9'\], missing \['2'\]"):
        DPOptimizer(sgd, max_grad_norm={"0": 1.0, "9": 1.0}, **kwargs)
    with pytest.raises(ConfigError, match="layer '2' must be > 0. Found -1.0"):
        DPOptimizer(sgd, max_grad_norm={"0": 1.0, "2": -1.0}, **kwargs)
    with pytest.raises(ConfigError, match="needs clipping_mode='per_layer'"):
        DPOptimizer(sgd, max_grad_norm={"0": 1.0, "2": 1.0}, **{**kwargs, "clipping_mode": "flat"})
    assert not model[0]._forward_hooks, "a refused optimizer left tracing hooks on the model"


def test_clipping_and_clipping_mode_each_refuse_the_others_values() -> None:
    """``clipping`` picks a strategy (auto, fast, generic), ``clipping_mode`` the bound's scope
    (flat, per_layer); each refuses the other's values, naming its own choices."""
    model = nn.Linear(3, 2)
    gen, _ = make_generator(0)
    kwargs = dict(
        module=model,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=1.0,
        sample_rate=0.5,
        generator=gen,
        secure_rng=False,
    )
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    assert CLIPPING_CHOICES == ("auto", "fast", "generic")
    assert CLIPPING_MODES == ("flat", "per_layer")
    for mode in CLIPPING_MODES:
        with pytest.raises(ConfigError, match=f"one of auto, fast, generic. Found '{mode}'"):
            DPOptimizer(sgd, clipping=mode, **kwargs)
    for choice in CLIPPING_CHOICES:
        with pytest.raises(ConfigError, match=f"one of flat, per_layer. Found '{choice}'"):
            DPOptimizer(sgd, clipping_mode=choice, **kwargs)


def test_backward_refuses_what_is_not_a_scalar_loss() -> None:
    model = nn.Linear(3, 2)
    opt = seeded_optimizer(
        model,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=1.0,
        sample_rate=0.5,
    )
    with pytest.raises(ConfigError, match=r"scalar loss .* Found Tensor of shape \(4, 2\)"):
        opt.backward(model(torch.randn(4, 3)))


def test_per_layer_noise_scales_with_the_root_sum_of_squares_of_the_bounds() -> None:
    """The sensitivity of per-layer clipping is sqrt(sum C_l²): with bounds 3 and 4 the noise
    on every coordinate has standard deviation σ·5 (before dividing by the batch size)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Tanh(), nn.Linear(100, 100))
    opt = seeded_optimizer(
        model,
        seed=5,
        noise_multiplier=0.5,
        max_grad_norm={"0": 3.0, "2": 4.0},
        expected_batch_size=2.0,
        sample_rate=0.5,
        clipping_mode="per_layer",
    )
    x = torch.randn(4, 100)
    opt.backward(model(x).sum() * 0.0)  # zero gradients: what is left is the noise
    opt.step()
    noise = torch.cat([p.grad.flatten() for p in model.parameters()]) * 2.0
    assert noise.numel() == 20_200
    assert abs(noise.std().item() - 0.5 * 5.0) < 0.05
    assert abs(noise.mean().item()) < 0.05
