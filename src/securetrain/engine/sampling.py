"""True Poisson sampling: every record joins each step independently with probability q, decided
on whole 64-bit keystream words (never a float32 grid, which would round small rates up)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from securetrain.engine.noise import KeystreamGenerator, check_generator
from securetrain.errors import ConfigError


def _check_sampling(sample_rate: float, steps: int, generator: KeystreamGenerator) -> None:
    if not (0 < sample_rate <= 1):
        raise ConfigError(f"Sampling rate must be in (0, 1]. Found {sample_rate}.")
    if steps < 1:
        raise ConfigError(f"Number of steps must be at least 1. Found {steps}.")
    check_generator(generator)


class PoissonBatchSampler:
    """Yields ``steps`` batches of indices; batch sizes follow Binomial(n, sample_rate) and may be 0."""

    def __init__(
        self, n: int, *, sample_rate: float, steps: int, generator: KeystreamGenerator
    ) -> None:
        if n < 1:
            raise ConfigError(f"Poisson sampling needs at least one record. Found {n}.")
        _check_sampling(sample_rate, steps, generator)
        self.n = n
        self.sample_rate = sample_rate
        self.steps = steps
        self.generator = generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = self.generator.bernoulli(self.n, self.sample_rate)
            yield mask.nonzero().flatten().tolist()


class UnitPoissonSampler:
    """Poisson sampling of privacy units (a patient, a customer): each unit joins a step
    independently with probability ``sample_rate`` and brings at most ``rows_per_unit`` of its
    rows, chosen afresh each step. ``units`` holds each record's unit; a batch lists each
    chosen unit's records together."""

    def __init__(
        self,
        units: torch.Tensor,
        *,
        sample_rate: float,
        steps: int,
        rows_per_unit: int,
        generator: KeystreamGenerator,
    ) -> None:
        if units.dim() != 1 or units.numel() < 1:
            raise ConfigError(
                "Unit sampling needs one unit label per record and at least one record. "
                f"Found shape {tuple(units.shape)}."
            )
        if rows_per_unit < 1:
            raise ConfigError(f"Rows per unit must be at least 1. Found {rows_per_unit}.")
        _check_sampling(sample_rate, steps, generator)
        self.labels, self.code = torch.unique(units, return_inverse=True)
        self.sample_rate = sample_rate
        self.steps = steps
        self.rows_per_unit = rows_per_unit
        self.generator = generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            chosen = self.generator.bernoulli(len(self.labels), self.sample_rate)
            rows = chosen[self.code].nonzero().flatten()
            # A random order within each unit (uniform keys), then the first rows_per_unit.
            keys = self.generator.uniform(len(rows))
            rows = rows[torch.argsort(keys, stable=True)]
            rows = rows[torch.argsort(self.code[rows], stable=True)]
            codes = self.code[rows]
            first = torch.searchsorted(codes, codes)
            keep = torch.arange(len(rows)) - first < self.rows_per_unit
            yield rows[keep].tolist()


def split_physical_units(
    indices: Sequence[int], units: torch.Tensor, max_physical_batch_size: int | None
) -> list[Sequence[int]]:
    """Split a logical batch whose units' records lie together into physical batches of at most
    the given size, never splitting a unit (its contribution is clipped once, as a whole)."""
    if not max_physical_batch_size or len(indices) <= max_physical_batch_size:
        return [indices]
    batches: list[Sequence[int]] = []
    start = 0
    while start < len(indices):
        end = min(start + max_physical_batch_size, len(indices))
        while end < len(indices) and end > start and units[indices[end]] == units[indices[end - 1]]:
            end -= 1
        if end == start:
            raise ConfigError(
                f"A unit has more records in one batch than the physical batch size "
                f"{max_physical_batch_size}; raise it or lower the rows per unit."
            )
        batches.append(indices[start:end])
        start = end
    return batches


def split_physical(
    indices: Sequence[int], max_physical_batch_size: int | None
) -> list[Sequence[int]]:
    """Split one logical batch into physical batches of at most the given size (never none)."""
    if not max_physical_batch_size or len(indices) <= max_physical_batch_size:
        return [indices]
    m = max_physical_batch_size
    return [indices[i : i + m] for i in range(0, len(indices), m)]


def dataset_size(dataset: Dataset[Any]) -> int:
    """The number of records of a map-style dataset (one with a length)."""
    if not isinstance(dataset, Sized):
        raise ConfigError(
            f"DP-SGD needs a dataset with a length (map-style). Found {type(dataset).__name__}."
        )
    return len(dataset)


def _empty_like_collate(dataset: Dataset[Any]) -> Any:
    """A collate function that also turns an empty batch into zero-length tensors."""
    from torch.utils.data import default_collate

    def collate(batch: list[Any]) -> Any:
        if batch:
            return default_collate(batch)
        template = default_collate([dataset[0]])
        return torch.utils._pytree.tree_map(lambda t: t[:0], template)

    return collate


class DPDataLoader(DataLoader[Any]):
    """A DataLoader whose batches are drawn by Poisson sampling (variable size, possibly empty)."""

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        sample_rate: float,
        steps: int,
        generator: KeystreamGenerator,
        num_workers: int = 0,
    ) -> None:
        self.sample_rate = sample_rate
        sampler = PoissonBatchSampler(
            dataset_size(dataset),
            sample_rate=sample_rate,
            steps=steps,
            generator=generator,
        )
        super().__init__(
            dataset,
            batch_sampler=sampler,
            collate_fn=_empty_like_collate(dataset),
            num_workers=num_workers,
        )
