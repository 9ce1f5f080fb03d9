"""DP-SGD step throughput: non-private PyTorch vs securetrain (fast, generic) vs Opacus hooks,
on the same model, data, batch size and clip/noise settings, interleaved in one process.
Prints one JSON object (median samples/s of each mode, and the ratios).

    python benchmarks/engine_speed.py            # the figures in BENCHMARKS.md
    python benchmarks/engine_speed.py --smoke    # seconds; CI keeps it working
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
from torch import nn

from securetrain.engine import DPOptimizer, make_generator


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2)
    )


def cnn() -> nn.Module:
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


MODELS = {
    "mlp_64_256_256_2": (mlp, lambda b: torch.randn(b, 64), 2),
    "cnn_digits_8x8": (cnn, lambda b: torch.randn(b, 1, 8, 8), 10),
}


def make_step(mode: str, build, batch: int, classes: int):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build()
    loss_fn = nn.CrossEntropyLoss()
    if mode == "non_private":
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
    elif mode.startswith("securetrain"):
        gen, _ = make_generator(0)
        opt = DPOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.01),
            module=model,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=batch,
            sample_rate=0.01,
            generator=gen,
            secure_rng=False,
            clipping=mode.split("_", 1)[1],
        )
    else:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer as OpacusOptimizer

        model = GradSampleModule(model)
        opt = OpacusOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.01),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=batch,
        )

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    batch, reps, steps = (32, 1, 2) if args.smoke else (256, 7, 20)
    modes = ["non_private", "opacus_hooks", "securetrain_generic", "securetrain_fast"]
    result: dict = {
        "settings": {
            "batch": batch,
            "threads": torch.get_num_threads(),
            "repetitions": reps,
            "steps_per_repetition": steps,
        }
    }
    warnings.simplefilter("ignore")
    for name, (build, inputs, classes) in MODELS.items():
        x, y = inputs(batch), torch.randint(0, classes, (batch,))
        fns = {m: make_step(m, build, batch, classes) for m in modes}
        for fn in fns.values():
            fn(x, y)  # warm-up
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(reps):
            for m, fn in fns.items():  # interleaved: drift hits every mode alike
                t = time.perf_counter()
                for _ in range(steps):
                    fn(x, y)
                times[m].append(time.perf_counter() - t)
        throughput = {m: batch * steps / statistics.median(ts) for m, ts in times.items()}
        result[name] = {
            "samples_per_s": {m: round(v) for m, v in throughput.items()},
            "fast_vs_non_private": round(
                throughput["securetrain_fast"] / throughput["non_private"], 3
            ),
            "fast_vs_opacus_hooks": round(
                throughput["securetrain_fast"] / throughput["opacus_hooks"], 3
            ),
            "fast_vs_generic": round(
                throughput["securetrain_fast"] / throughput["securetrain_generic"], 3
            ),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
