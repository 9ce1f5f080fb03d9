"""Sealed-dataset I/O: seal / verify / unseal throughput beside plain pyarrow reads, and the cost
of training from sealed data rather than from a plaintext file. Prints one JSON object.

    python benchmarks/sealed_io.py              # ~200 MB table, the figures in BENCHMARKS.md
    python benchmarks/sealed_io.py --smoke      # seconds; CI keeps it working

Arrow and the cipher run on one core (pyarrow CPU and I/O pools set to 1 thread).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from securetrain import TrainConfig, train
from securetrain.crypto import generate_keyset, provider_for_keydir
from securetrain.data import load_builtin
from securetrain.sealed import open_sealed, seal_dataset, seal_table, verify_sealed


def synthetic_table(target_bytes: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = target_bytes // (8 * 12 + 4)
    cols = {f"x{i}": rng.normal(size=rows) for i in range(12)}
    cols["category"] = pa.DictionaryArray.from_arrays(
        rng.integers(0, 6, rows).astype(np.int32), ["a", "b", "c", "d", "e", "f"]
    )
    return pa.table(cols)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def io_figures(root: Path, target_bytes: int, repeats: int) -> dict:
    keys = generate_keyset(root / "keys")
    provider = provider_for_keydir(keys.root)
    table = synthetic_table(target_bytes)
    mb = table.nbytes / 1e6
    parquet = root / "plain.parquet"
    pq.write_table(table, parquet, compression="none")
    counter = iter(range(10**6))

    def seal() -> None:
        seal_table(
            table, root / f"s{next(counter)}.sealed", keys=provider, signing_key=keys.signing_key
        )

    t_seal = best_of(seal, repeats)
    sealed = root / "s0.sealed"
    t_verify = best_of(lambda: verify_sealed(sealed, keys.public_key), repeats)
    verified = verify_sealed(sealed, keys.public_key)
    t_unseal = best_of(lambda: open_sealed(verified, keys=provider), repeats)
    t_parquet = best_of(lambda: pq.read_table(parquet), repeats)
    assert open_sealed(verified, keys=provider).equals(table)
    return {
        "table_mb": round(mb, 1),
        "rows": table.num_rows,
        "seal_mb_per_s": round(mb / t_seal, 1),
        "verify_signature_mb_per_s": round(mb / t_verify, 1),
        "unseal_decrypt_mb_per_s": round(mb / t_unseal, 1),
        "plain_parquet_read_mb_per_s": round(mb / t_parquet, 1),
        "unseal_vs_parquet_read": round(t_parquet / t_unseal, 2),
    }


def training_figures(root: Path, repeats: int, epochs: int) -> dict:
    """Same data, same seed, same settings: from a Parquet file vs from the sealed dataset."""
    keys = generate_keyset(root / "train-keys")
    data = load_builtin("builtin:synthetic-fraud")
    table = data.to_table()
    plain = root / "fraud.parquet"
    pq.write_table(table, plain)
    sealed = root / "fraud.sealed"
    seal_dataset(data, sealed, keys=provider_for_keydir(keys.root), signing_key=keys.signing_key)
    schema_file = root / "schema.json"
    schema_file.write_text(json.dumps(data.schema.to_json()))
    counter = iter(range(10**6))
    common = dict(epsilon=1.0, seed=3, epochs=epochs, key_dir=keys.root)

    def run(source: Path, **extra) -> None:
        train(TrainConfig(data=str(source), out=root / f"m{next(counter)}", **common, **extra))

    plain_times, sealed_times = [], []
    for _ in range(repeats):  # interleaved, so drift hits both alike
        t = time.perf_counter()
        run(plain, label=data.label_name, schema_path=schema_file)
        plain_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        run(sealed)
        sealed_times.append(time.perf_counter() - t)
    tp, ts = float(np.median(plain_times)), float(np.median(sealed_times))
    return {
        "rows": table.num_rows,
        "epochs": epochs,
        "train_from_plaintext_s": round(tp, 2),
        "train_from_sealed_s": round(ts, 2),
        "sealed_overhead_fraction": round((ts - tp) / tp, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    root = Path(tempfile.mkdtemp(prefix="sealed-io-"))
    try:
        target = 2_000_000 if args.smoke else 200_000_000
        result = {
            "settings": {"arrow_threads": 1, "smoke": args.smoke},
            "io": io_figures(root, target, repeats=1 if args.smoke else 3),
            "training": training_figures(
                root, repeats=1 if args.smoke else 3, epochs=1 if args.smoke else 5
            ),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
