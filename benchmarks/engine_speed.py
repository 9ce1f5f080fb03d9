"""DP-SGD step throughput and peak memory: non-private PyTorch, Opacus (hooks and ghost
clipping) and securetrain (generic and fast), on the same model, data, batch size and clip/noise
settings, with repetitions interleaved in one process. Prints one JSON object.

    python benchmarks/engine_speed.py            # the figures in BENCHMARKS.md
    python benchmarks/engine_speed.py --smoke    # seconds; CI keeps it working

Throughput is the median over repetitions of samples per second of whole training steps
(forward, backward, clipping, noise, update). Peak memory is the most memory held at once, during one
step, in blocks allocated within that step (model, data and anything from before the step
excluded), from the PyTorch profiler's allocation events.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from securetrain.engine import DPOptimizer, make_generator

MODES = ("non_private", "opacus_hooks", "opacus_ghost", "securetrain_generic", "securetrain_fast")


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2)
    )


def cnn_8x8() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.GroupNorm(4, 32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def cnn_32x32() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.GroupNorm(4, 32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.GroupNorm(4, 32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    )


class Transformer(nn.Module):
    """One pre-norm encoder block (single-head attention and a feed-forward layer, all from
    Linear layers), token embeddings, mean pooling and a classification head."""

    def __init__(self, vocab: int = 1000, d: int = 64, hidden: int = 256, classes: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm2 = nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        a = self.norm1(h)
        scores = self.q(a) @ self.k(a).transpose(1, 2) / math.sqrt(a.shape[-1])
        h = h + self.o(torch.softmax(scores, dim=-1) @ self.v(a))
        h = h + self.ff2(torch.relu(self.ff1(self.norm2(h))))
        return self.head(h.mean(1))


# name -> (model, inputs for a batch size, number of classes, description)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor], int, str]] = {
    "mlp_64_256_256_2": (mlp, lambda b: torch.randn(b, 64), 2, "MLP 64→256→256→2"),
    "cnn_digits_8x8": (
        cnn_8x8,
        lambda b: torch.randn(b, 1, 8, 8),
        10,
        "CNN on 8×8 (2 conv + GroupNorm, linear)",
    ),
    "cnn_32x32": (
        cnn_32x32,
        lambda b: torch.randn(b, 3, 32, 32),
        10,
        "CNN on 32×32×3 (3 conv + GroupNorm, linear)",
    ),
    "transformer_seq32": (
        Transformer,
        lambda b: torch.randint(0, 1000, (b, 32)),
        2,
        "Transformer block, 32 tokens, d=64",
    ),
}


def make_step(mode: str, build: Callable[[], nn.Module], batch: int) -> Callable[..., None]:
    torch.manual_seed(0)
    model = build()
    loss_fn = nn.CrossEntropyLoss()
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)
    if mode == "non_private":

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            sgd.zero_grad()
            loss_fn(model(x), y).backward()
            sgd.step()

        return step
    if mode.startswith("securetrain"):
        gen, _ = make_generator(0)
        opt = DPOptimizer(
            sgd,
            module=model,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=batch,
            sample_rate=0.01,
            generator=gen,
            secure_rng=False,
            clipping=mode.split("_", 1)[1],
        )

        def dp_step(x: torch.Tensor, y: torch.Tensor) -> None:
            opt.zero_grad()
            opt.backward(loss_fn(model(x), y))
            opt.step()

        return dp_step
    if mode == "opacus_hooks":
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer as OpacusOptimizer

        gsm = GradSampleModule(model)
        hooks = OpacusOptimizer(
            torch.optim.SGD(gsm.parameters(), lr=0.01),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=batch,
        )

        def hooks_step(x: torch.Tensor, y: torch.Tensor) -> None:
            hooks.zero_grad()
            loss_fn(gsm(x), y).backward()
            hooks.step()

        return hooks_step
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    ghost_module = GradSampleModuleFastGradientClipping(model, max_grad_norm=1.0)
    ghost = DPOptimizerFastGradientClipping(
        torch.optim.SGD(ghost_module.parameters(), lr=0.01),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=batch,
    )
    criterion = DPLossFastGradientClipping(ghost_module, ghost, loss_fn)

    def ghost_step(x: torch.Tensor, y: torch.Tensor) -> None:
        ghost.zero_grad()
        criterion(ghost_module(x), y).backward()
        ghost.step()

    return ghost_step


def peak_memory(step: Callable[..., None], x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes: the allocator's high-water mark during one step, relative to its start."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(x, y)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    # Count only blocks allocated within this step, so that blocks from before it (freed now or
    # never) cannot shift the figure.
    live: dict[int, int] = {}
    current = peak = 0
    for e in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]):
        addr, nbytes = e["args"]["Addr"], e["args"]["Bytes"]
        if nbytes > 0:
            live[addr] = nbytes
            current += nbytes
            peak = max(peak, current)
        elif addr in live:
            current -= live.pop(addr)
    return peak


def timed(step: Callable[..., None], x: torch.Tensor, y: torch.Tensor, min_s: float) -> float:
    """Samples per second over at least two steps and at least ``min_s`` seconds."""
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < min_s:
        step(x, y)
        steps += 1
    return len(x) * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    torch.set_num_threads(2)
    batch, reps, min_s = (16, 1, 0.0) if args.smoke else (256, 7, 0.5)
    result: dict = {
        "settings": {
            "batch": batch,
            "threads": torch.get_num_threads(),
            "repetitions": reps,
            "min_seconds_per_repetition": min_s,
            "torch": torch.__version__,
        }
    }
    warnings.simplefilter("ignore")
    for name in args.models:
        build, inputs, classes, description = MODELS[name]
        torch.manual_seed(1)
        x, y = inputs(batch), torch.randint(0, classes, (batch,))
        steps = {m: make_step(m, build, batch) for m in args.modes}
        for step in steps.values():
            step(x, y)  # warm-up (and securetrain's one-time tracing check)
        memory = {m: peak_memory(step, x, y) for m, step in steps.items()}
        samples: dict[str, list[float]] = {m: [] for m in args.modes}
        for _ in range(reps):
            for m, step in steps.items():  # interleaved: drift hits every mode alike
                samples[m].append(timed(step, x, y, min_s))
        throughput = {m: statistics.median(v) for m, v in samples.items()}
        entry: dict = {
            "description": description,
            "samples_per_s": {m: round(v) for m, v in throughput.items()},
            "peak_memory_mib": {m: round(v / 2**20, 2) for m, v in memory.items()},
        }
        if "securetrain_fast" in throughput:
            fast = throughput["securetrain_fast"]
            opacus = [throughput[m] for m in ("opacus_hooks", "opacus_ghost") if m in throughput]
            if "non_private" in throughput:
                entry["fast_vs_non_private"] = round(fast / throughput["non_private"], 3)
                entry["fast_memory_vs_non_private"] = round(
                    memory["securetrain_fast"] / max(memory["non_private"], 1), 3
                )
            if opacus:
                entry["fast_vs_opacus_fastest"] = round(fast / max(opacus), 3)
        result[name] = entry
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
