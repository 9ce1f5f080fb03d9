"""Per-unit clipping (a unit: all the rows of one patient): the clipped sums from one backward
pass and the layers' strategies equal a brute-force loop that takes each unit's summed gradient
by its own backward pass, clips it as one and adds it up."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from securetrain.engine import (
    GradientTracer,
    Grouping,
    UnitPoissonSampler,
    clipped_sums,
    make_generator,
    split_physical_units,
)
from securetrain.errors import ConfigError
from tests.engine_reference import seeded_optimizer
from tests.unit.test_engine_fast_strategies import MODELS


def _reference(model, x, y, units, clip):
    """Each unit's gradient of its rows' summed loss, clipped in L2 as one, summed over units."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for u in torch.unique(units):
        rows = units == u
        model.zero_grad()
        nn.functional.cross_entropy(model(x[rows]), y[rows], reduction="sum").backward()
        grads = {
            n: (p.grad if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()
        }
        norm = math.sqrt(sum(g.pow(2).sum().item() for g in grads.values()))
        for n in total:
            total[n] += min(1.0, clip / (norm + 1e-6)) * grads[n]
    return total


def _ours(model, x, y, units, clip, clipping="auto"):
    tracer = GradientTracer(model, loss_reduction="sum")
    try:
        nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        sums, n, _ = clipped_sums(
            tracer.layers, tracer.take(), clip, clipping=clipping, groups=Grouping.of(units)
        )
    finally:
        tracer.remove()
    got = {}
    for layer, by_param in sums.items():
        for param, value in by_param.items():
            got[f"{layer}.{param}" if layer else param] = value
    return got, n


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(MODELS)),
    rows=st.sampled_from([1, 3, 8, 13]),
    n_units=st.integers(1, 5),
    clip=st.sampled_from([1e-3, 0.1, 1e4]),
    seed=st.integers(0, 2**31 - 1),
)
def test_per_unit_clipped_sums_equal_the_brute_force_per_unit_loop(
    name, rows, n_units, clip, seed
) -> None:
    torch.manual_seed(seed)
    build, inputs = MODELS[name]
    model = build()
    x, y = inputs(rows), torch.randint(0, 3, (rows,))
    # Unit labels out of order and not contiguous, some units with many rows.
    units = torch.randint(0, n_units, (rows,)) * 7 + 3
    expected = _reference(model, x, y, units, clip)
    got, n = _ours(model, x, y, units, clip)
    assert n == len(torch.unique(units))
    for name_ in expected:
        torch.testing.assert_close(got[name_], expected[name_], atol=1e-5, rtol=1e-5)


def test_one_row_per_unit_is_per_example_clipping_and_a_unit_is_bounded_as_one() -> None:
    torch.manual_seed(0)
    build, inputs = MODELS["mlp"]
    model = build()
    x, y = inputs(12), torch.randint(0, 3, (12,))
    per_row, _ = _ours(model, x, y, torch.arange(12), 1e-3)
    tracer = GradientTracer(model, loss_reduction="sum")
    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    plain, _, _ = clipped_sums(tracer.layers, tracer.take(), 1e-3)
    tracer.remove()
    for layer, by_param in plain.items():
        for param, value in by_param.items():
            torch.testing.assert_close(per_row[f"{layer}.{param}"], value)
    # All twelve rows as one unit: the whole sum is one clipped gradient, norm at most C.
    one_unit, _ = _ours(model, x, y, torch.zeros(12, dtype=torch.long), 1e-3)
    norm = math.sqrt(sum(v.pow(2).sum().item() for v in one_unit.values()))
    assert norm <= 1e-3 * (1 + 1e-4)


def test_grouping_refuses_what_is_not_one_integer_label_per_row() -> None:
    for bad in (torch.zeros(3, 2, dtype=torch.long), torch.zeros(4)):
        with pytest.raises(ConfigError, match="one integer label per row"):
            Grouping.of(bad)
    groups = Grouping.of(torch.tensor([5, 2, 5, 9, 2, 5]))
    assert groups.n_units == 3
    assert groups.slots.tolist() == [[1, 4, -1], [0, 2, 5], [3, -1, -1]]


def test_a_per_unit_optimizer_step_is_the_brute_force_sum_and_keeps_units_whole() -> None:
    torch.manual_seed(1)
    build, inputs = MODELS["transformer"]
    model = build()
    x, y = inputs(10), torch.randint(0, 3, (10,))
    units = torch.tensor([4, 4, 4, 1, 1, 9, 9, 9, 9, 2])
    expected = _reference(model, x, y, units, 0.05)
    for batches in ([slice(0, 10)], [slice(0, 5), slice(5, 10)]):
        opt = seeded_optimizer(model, max_grad_norm=0.05, per_unit=True, loss_reduction="sum")
        opt.zero_grad()
        for rows in batches:
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows], reduction="sum")
            opt.backward(loss, units=units[rows])
            opt.accumulate()
        assert opt.samples_in_batch == len(torch.unique(units))
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[n], atol=1e-5, rtol=1e-5)
        opt.detach()
    opt = seeded_optimizer(model, per_unit=True, loss_reduction="sum")
    opt.zero_grad()
    opt.backward(nn.functional.cross_entropy(model(x[:4]), y[:4], reduction="sum"), units=units[:4])
    opt.accumulate()
    with pytest.raises(ConfigError, match="Found unit 1 again"):
        opt.backward(nn.functional.cross_entropy(model(x[4:]), y[4:]), units=units[4:])
    with pytest.raises(ConfigError, match="needs units= on every backward"):
        opt.backward(nn.functional.cross_entropy(model(x), y))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(ConfigError, match="takes its gradients from backward"):
        opt.accumulate()
    opt.detach()
    row_level = seeded_optimizer(model)
    with pytest.raises(ConfigError, match="per_unit=True"):
        row_level.backward(nn.functional.cross_entropy(model(x), y), units=units)
    row_level.detach()


def test_unit_sampling_takes_whole_units_at_rate_q_and_at_most_k_rows_each() -> None:
    gen, _ = make_generator(3)
    units = torch.repeat_interleave(torch.arange(40) * 3, torch.arange(1, 41))  # 1..40 rows
    sampler = UnitPoissonSampler(units, sample_rate=0.25, steps=400, rows_per_unit=5, generator=gen)
    joined = torch.zeros(40)
    subsets_of_the_largest = set()
    for batch in sampler:
        labels = units[batch]
        # Each chosen unit's rows lie together, distinct, at most k of them.
        assert len(set(batch)) == len(batch)
        changes = (labels[1:] != labels[:-1]).sum().item() if len(batch) else -1
        present, counts = torch.unique(labels, return_counts=True)
        assert changes == len(present) - 1
        sizes = torch.bincount(torch.arange(40), minlength=40)[present // 3] + present // 3
        assert (counts == torch.clamp(sizes, max=5)).all()
        joined[present // 3] += 1
        if 117 in present.tolist():
            subsets_of_the_largest.add(tuple(sorted(batch[-5:])))
    # Each unit joins at rate q whatever its size: 400 steps, q = 1/4, 5 standard deviations.
    assert (joined - 100).abs().max() < 5 * math.sqrt(400 * 0.25 * 0.75)
    assert len(subsets_of_the_largest) > 50  # a fresh choice of rows each step
    with pytest.raises(ConfigError, match="Rows per unit"):
        UnitPoissonSampler(units, sample_rate=0.5, steps=1, rows_per_unit=0, generator=gen)


def test_physical_batches_never_split_a_unit() -> None:
    units = torch.tensor([7, 7, 7, 2, 2, 5, 9, 9, 9, 9])
    batches = split_physical_units(list(range(10)), units, 4)
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ConfigError, match="more records in one batch"):
        split_physical_units(list(range(10)), units, 3)
