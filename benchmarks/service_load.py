"""Load on the team service: concurrent clients list datasets and poll a job's status against
`securetrain serve` (uvicorn, one worker process) on loopback.

Each client logs in once (its own session), then alternates GET /api/v1/datasets and
GET /api/v1/jobs/{id} as fast as answers come back. Every request is authenticated and written to
the audit log, as in production. Prints one JSON object: requests, errors, latency percentiles
and throughput.

    .venv/bin/python benchmarks/service_load.py                 # 50 clients, 60 s
    .venv/bin/python benchmarks/service_load.py --store URL     # e.g. PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from securetrain.crypto.keys import generate_keyset
from securetrain.data import load_builtin
from securetrain.sealed import seal_dataset
from securetrain.service import auth, registry
from securetrain.service.settings import ServiceSettings

PASSWORD = "load-test password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(root: Path, store_url: str) -> None:
    """The service's key set; an owner with their own key set, sealing for the service's public
    key; the owner's signing key bound to their account, as an admin would."""
    service = generate_keyset(root / "keys")
    owner = generate_keyset(root / "owner-keys")
    (root / "data").mkdir()
    seal_dataset(
        load_builtin("breast-cancer"),
        root / "data" / "ward.sealed",
        recipient=service.encryption_public_key,
        signing_key=owner.signing_key,
    )
    settings = ServiceSettings(
        store=store_url, data_dir=root / "data", key_dir=root / "keys", results_dir=root / "results"
    )
    store = settings.open_store()
    auth.add_user(store, "owner", "owner", PASSWORD)
    auth.add_user(store, "analyst", "analyst", PASSWORD)
    registry.bind_owner_key(store, settings, "owner", owner.public_key.read_bytes(), actor="admin")


async def _client(
    base: str, dataset: str, job: str, until: float, latencies: list[float], errors: list[str]
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        r = await client.post("/api/v1/auth/login", json={"name": "analyst", "password": PASSWORD})
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        paths = ["/api/v1/datasets", f"/api/v1/jobs/{job}"]
        i = 0
        while time.monotonic() < until:
            start = time.perf_counter()
            try:
                r = await client.get(paths[i % 2], headers=headers)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {paths[i % 2]}")
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            latencies.append(time.perf_counter() - start)
            i += 1


async def _load(base: str, clients: int, seconds: float) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def login(name: str) -> dict[str, str]:
            r = await client.post("/api/v1/auth/login", json={"name": name, "password": PASSWORD})
            return {"Authorization": f"Bearer {r.json()['token']}"}

        owner, analyst = await login("owner"), await login("analyst")
        r = await client.post(
            "/api/v1/datasets",
            json={"path": "ward.sealed", "require_approval": True},
            headers=owner,
        )
        dataset = r.json()["id"]
        await client.post(
            f"/api/v1/datasets/{dataset}/grants", json={"analyst": "analyst"}, headers=owner
        )
        r = await client.post(
            "/api/v1/jobs", json={"dataset_id": dataset, "epsilon": 1.0}, headers=analyst
        )
        job = r.json()["id"]
    latencies: list[float] = []
    errors: list[str] = []
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(
        *[_client(base, dataset, job, until, latencies, errors) for _ in range(clients)]
    )
    elapsed = time.monotonic() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:10],
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1),
            "p90": round(float(np.percentile(ms, 90)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1),
            "max": round(float(ms.max()), 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--store", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--smoke", action="store_true", help="5 clients for 2 s")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.seconds = 5, 2.0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["SECURETRAIN_HOME"] = str(root / "home")  # audit keys, for both processes
        store_url = args.store or f"sqlite:///{root / 'store.db'}"
        _prepare(root, store_url)
        port = _free_port()
        with (root / "serve.log").open("w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "securetrain",
                    "serve",
                    "--data-dir",
                    str(root / "data"),
                    "--key",
                    str(root / "keys"),
                    "--store",
                    store_url,
                    "--port",
                    str(port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                try:
                    httpx.get(base + "/api/v1/health", timeout=2)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None:
                        raise SystemExit((root / "serve.log").read_text()) from None
                    time.sleep(0.25)
            result = asyncio.run(_load(base, args.clients, args.seconds))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result["store"] = "postgresql" if store_url.startswith("postgresql") else "sqlite"
    result["server"] = "uvicorn, 1 process, plus 1 job worker process; client on the same host"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
