"""What an analyst can learn about a dataset through the team service: nothing exact.

Audit jobs compute exact statistics over the training rows, so only a dataset's owner and
auditors start and read them. A job that fails after decryption keeps its charge, and its
reason (which may describe the data) reaches the analyst only as a generic message. Last, an
analyst walks every route in the OpenAPI spec, with every id they could try, after real jobs
have succeeded, failed on bad data and been audited; every JSON, text and zip body that comes
back is read for the dataset's exact counts, exact test metrics and screening counts, and for
data-dependent error text and loss values."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import accuracy_score, roc_auc_score
from sqlalchemy import select

from securetrain.data import load_builtin
from securetrain.data.split import split_mask
from securetrain.screening import ScreenReport, screen
from securetrain.sealed.container import CHUNKS
from securetrain.service.app import create_app
from securetrain.service.jobs import (
    FAILED_AFTER_DECRYPTION,
    FAILED_BEFORE_DECRYPTION,
    result_dir,
)
from securetrain.service.worker import work
from securetrain.store import ledger
from securetrain.store.auditlog import entries
from securetrain.store.schema import jobs
from securetrain.train.predict import load_model, predict_probabilities
from tests.integration.test_service_api import BODIES, HEX, MATRIX, PUBLIC, login
from tests.service_world import BAD_LABELS, World, build_world

A, B = "ward-a.sealed", "ward-b.sealed"
DETAIL = "Label column 'diagnosis' has 1 missing value(s)"
# Text that describes the data or the training loss; none of it may reach an analyst.
DATA_TEXT = ("missing value", "Label column", "No training rows", "rows to audit", "loss")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?")
NUMBER = re.compile(r"(?<![\w.])-?\d+(\.\d+)?([eE][-+]?\d+)?(?!\w|\.\d)")
SMALLEST_COUNT = 10  # smaller counts cannot be told apart from settings (epochs, classes, ...)
METRIC_TOLERANCE = 5e-5  # the exact metric, at full precision or rounded to 4 decimals


@pytest.fixture
def service(tmp_path: Path, store_url: str):
    """ward-a and the bad-label dataset, owned by alice and granted to ana; ward-b, oscar's."""
    world = build_world(tmp_path, store_url)
    client = TestClient(create_app(world.settings))
    alice = login(client, "alice")
    ids = {}
    for path in (A, BAD_LABELS):
        r = client.post(
            "/api/v1/datasets", json={"path": path, "require_approval": False}, headers=alice
        )
        assert r.status_code == 201, r.text
        ids[path] = r.json()["id"]
        r = client.put(f"/api/v1/datasets/{ids[path]}/budget", json={"epsilon": 5.0}, headers=alice)
        assert r.status_code == 200, r.text
        r = client.post(
            f"/api/v1/datasets/{ids[path]}/grants", json={"analyst": "ana"}, headers=alice
        )
        assert r.status_code == 201, r.text
    r = client.post("/api/v1/datasets", json={"path": B}, headers=login(client, "oscar"))
    ids[B] = r.json()["id"]
    yield world, client, ids
    client.close()


def _submit(client: TestClient, headers: dict[str, str], **body: object) -> str:
    r = client.post("/api/v1/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "queued", r.json()
    return r.json()["id"]


def test_a_job_that_fails_after_decryption_keeps_its_charge_and_only_the_owner_sees_why(
    service,
) -> None:
    world, client, ids = service
    ana, alice, audrey = (login(client, name) for name in ("ana", "alice", "audrey"))
    bad = _submit(client, ana, dataset_id=ids[BAD_LABELS], epsilon=1.0, epochs=2)
    assert work(world.store, world.settings, once=True) == 1
    seen = client.get(f"/api/v1/jobs/{bad}", headers=ana).json()
    assert seen["state"] == "failed" and seen["error"] == FAILED_AFTER_DECRYPTION, seen
    assert [j["error"] for j in client.get("/api/v1/jobs", headers=ana).json()] == [
        FAILED_AFTER_DECRYPTION
    ]
    log = client.get(f"/api/v1/jobs/{bad}/log", headers=ana).json()["log"]
    assert "training on" in log and not any(text in log for text in DATA_TEXT), log
    for reader in (alice, audrey):
        assert client.get(f"/api/v1/jobs/{bad}", headers=reader).json()["error"] == DETAIL + (
            "; drop or fill those rows."
        )
    # The data was decrypted: the charge stays, and the analyst's budget view shows it.
    status = ledger.status(world.store, ids[BAD_LABELS])
    assert [run.state for run in status.runs] == ["failed"] and status.reserved > 0.9
    budget = client.get(f"/api/v1/datasets/{ids[BAD_LABELS]}", headers=ana).json()["budget"]
    assert budget["reserved"] == pytest.approx(status.reserved)
    # A job that fails before decryption (the sealed file was damaged after submission) says
    # so; the ledger records that nothing ran.
    early = _submit(client, ana, dataset_id=ids[A], epsilon=1.0, epochs=2)
    chunk = next((world.settings.data_dir / A / CHUNKS).iterdir())
    chunk.write_bytes(chunk.read_bytes() + b"\0")
    assert work(world.store, world.settings, once=True) == 1
    assert client.get(f"/api/v1/jobs/{early}", headers=ana).json()["error"] == (
        FAILED_BEFORE_DECRYPTION
    )
    assert client.get(f"/api/v1/jobs/{early}", headers=alice).json()["error"] != (
        FAILED_BEFORE_DECRYPTION
    )
    with world.store.transaction() as conn:
        early_run = conn.execute(select(jobs.c.run_id).where(jobs.c.id == early)).scalar_one()
    assert ledger.get_run(world.store, early_run).state == "released"
    assert early_run not in {run.run_id for run in ledger.status(world.store, ids[A]).runs}
    # The audit log, which auditors and admins read, records the kind of error, not its text.
    failures = [e for e in entries(world.store) if e.action == "job.failed"]
    assert [e.details["error"] for e in failures] == ["DataError", "IntegrityError"]
    assert not any("missing" in json.dumps(e.details) for e in entries(world.store))


def test_only_a_datasets_owner_and_auditors_start_and_read_audits(service) -> None:
    world, client, ids = service
    ana, alice, audrey = (login(client, name) for name in ("ana", "alice", "audrey"))
    trained = _submit(client, ana, dataset_id=ids[A], epsilon=1.0, epochs=2)
    assert work(world.store, world.settings, once=True) == 1
    audit = {"dataset_id": ids[A], "kind": "audit", "train_job": trained}
    r = client.post("/api/v1/jobs", json=audit, headers=ana)
    assert r.status_code == 403 and "audit jobs" in r.json()["detail"], r.text
    r = client.post("/api/v1/jobs", json=audit, headers=login(client, "oscar"))
    assert r.status_code == 404, r.text
    r = client.post("/api/v1/jobs", json={"dataset_id": ids[A], "epsilon": 1}, headers=alice)
    assert r.status_code == 403 and "training jobs" in r.json()["detail"], r.text
    # Audits charge nothing and their results stay with the owner and auditors: no approval.
    client.put(f"/api/v1/datasets/{ids[A]}/policy", json={"require_approval": True}, headers=alice)
    owners = _submit(client, alice, **audit, canaries=0)
    auditors = _submit(client, audrey, **audit, canaries=0)
    assert client.post(f"/api/v1/jobs/{auditors}/cancel", headers=audrey).json()["state"] == (
        "cancelled"
    )
    assert client.post(f"/api/v1/jobs/{owners}/cancel", headers=audrey).status_code == 403
    assert work(world.store, world.settings, once=True) == 1
    for reader in (alice, audrey):
        assert client.get(f"/api/v1/jobs/{owners}/audit", headers=reader).status_code == 200
        r = client.get(f"/api/v1/jobs/{owners}/report", headers=reader)
        assert r.status_code == 200 and "<svg" in r.text
    for route in ("audit", "report"):
        assert client.get(f"/api/v1/jobs/{owners}/{route}", headers=ana).status_code == 403
    for route in ("", "/log"):
        assert client.get(f"/api/v1/jobs/{owners}{route}", headers=ana).status_code == 404
    assert [j["id"] for j in client.get("/api/v1/jobs", headers=ana).json()] == [trained]
    assert ledger.status(world.store, ids[A]).reserved == pytest.approx(
        ledger.status(world.store, ids[A]).spent
    )


def _exact(world: World, job: str, screened: ScreenReport) -> dict[str, float]:
    """The values that only the plaintext gives, for a training job on ward-a: the table's row
    count (the sealed header's), the exact split sizes, screening counts, test metrics. Counts
    equal to the number of columns (public, in the schema) cannot be told apart from it."""
    card, model = load_model(result_dir(world.settings, job) / "bundle")
    data = load_builtin("breast-cancer")
    split = card.data.split
    test = split_mask(data, seed=split.seed, test_fraction=split.test_fraction)
    held_out = data.take(np.flatnonzero(test))
    probs = predict_probabilities(card, model, held_out.features)
    y, known = card.model.preprocessing.encode_labels(held_out.labels)
    assert known.all()
    counts = {
        "rows": data.n_rows,
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
        "flagged": len(screened.flagged_rows),
        **screened.counts(),
    }
    public = {data.features.num_columns, data.features.num_columns + 1}
    return {
        **{name: n for name, n in counts.items() if n >= SMALLEST_COUNT and n not in public},
        "test_accuracy": float(accuracy_score(y, probs.argmax(1))),
        "test_auc": float(roc_auc_score(y, probs[:, 1])),
    }


def _matches(value: float, exact: dict[str, float]) -> list[str]:
    return [
        name
        for name, e in exact.items()
        if (value == e if isinstance(e, int) else abs(value - e) <= METRIC_TOLERANCE + 1e-12)
    ]


def _numbers(doc, where: str = ""):  # type: ignore[no-untyped-def]
    """Every number in a JSON document or a text, with where it is (list indices dropped)."""
    if isinstance(doc, bool) or doc is None:
        return
    if isinstance(doc, int | float):
        yield where, float(doc)
    elif isinstance(doc, str):
        for m in NUMBER.finditer(TIMESTAMP.sub(" ", doc)):
            yield where, float(m.group())
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield from _numbers(key, f"{where}.<key>")
            yield from _numbers(value, f"{where}.{key}")
    else:
        for value in doc:
            yield from _numbers(value, f"{where}[]")


def _documents(r) -> list[tuple[str, object]]:  # type: ignore[no-untyped-def]
    """A response's contents: its JSON, its text, or each file of a zip (a safetensors file's
    header, less the tensors' layout, which is the architecture's)."""
    kind = r.headers.get("content-type", "")
    if kind.startswith("application/zip"):
        docs: list[tuple[str, object]] = []
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            for name in zf.namelist():
                blob = zf.read(name)
                if name.endswith(".safetensors"):
                    size = int.from_bytes(blob[:8], "little")
                    docs.append((name, json.loads(blob[8 : 8 + size]).get("__metadata__", {})))
                else:
                    docs.append((name, json.loads(blob)))
        return docs
    if kind.startswith("application/json"):
        return [("", r.json())]
    return [("", r.text)]


def test_an_analyst_reaches_no_exact_count_statistic_or_data_dependent_text(service) -> None:
    world, client, ids = service
    ana, alice = login(client, "ana"), login(client, "alice")
    trained = [_submit(client, ana, dataset_id=ids[A], epsilon=1.0, epochs=2) for _ in range(2)]
    failed = _submit(client, ana, dataset_id=ids[BAD_LABELS], epsilon=1.0, epochs=2)
    assert work(world.store, world.settings, once=True) == 3
    audit = _submit(
        client, alice, dataset_id=ids[A], kind="audit", train_job=trained[0], canaries=0
    )
    assert work(world.store, world.settings, once=True) == 1
    states = {j["id"]: j["state"] for j in client.get("/api/v1/jobs", headers=alice).json()}
    assert states == dict.fromkeys(trained, "succeeded") | {failed: "failed", audit: "succeeded"}
    screened = screen(load_builtin("breast-cancer"))
    exact = {job: _exact(world, job, screened) for job in trained}
    every_exact = {f"{job[:8]}.{name}": v for job in trained for name, v in exact[job].items()}

    spec = client.get("/api/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert routes - PUBLIC == set(MATRIX), "every route needs an entry in the role matrix"
    token = client.post("/api/v1/tokens", json={"label": "walk"}, headers=ana).json()["id"]
    fills = {
        "{job_id}": [*trained, failed, audit, HEX],
        "{dataset_id}": [ids[A], ids[BAD_LABELS], ids[B], HEX],
        "{token_id}": [token, HEX],
        "{name}": ["ana"],
        "{analyst}": ["ana"],
    }
    job_bodies = [
        {"dataset_id": ids[A], "epsilon": 6},  # over budget
        {"dataset_id": ids[A], "epsilon": 1, "classes": ["x", "y"]},
        {"dataset_id": ids[A], "kind": "audit", "train_job": trained[0]},
        {"dataset_id": ids[B], "epsilon": 1},  # not granted
    ]
    # where -> {trained job or None: numbers}; the logout route last, so the session holds.
    found: dict[str, dict[str | None, list[float]]] = defaultdict(lambda: defaultdict(list))
    texts: list[tuple[str, str]] = []
    calls = 0
    for method, template in sorted(routes, key=lambda route: route[1] == "/api/v1/auth/logout"):
        paths = [template]
        for slot, values in fills.items():
            if slot in template:
                paths = [p.replace(slot, v) for p in paths for v in values]
        bodies = [BODIES.get(template)]
        if (method, template) == ("POST", "/api/v1/jobs"):
            bodies = job_bodies
        if template == "/api/v1/auth/login":
            bodies = [{"name": "ana", "password": "wrong password"}]
        for path in paths:
            tag = next((job for job in trained if job in path), None)
            for body in bodies:
                r = client.request(method, path, json=body, headers=ana)
                calls += 1
                assert r.status_code < 500, (method, path, r.status_code, r.text)
                if (method, template) in MATRIX and "analyst" not in MATRIX[method, template]:
                    assert r.status_code in (403, 404), (method, path, r.status_code)
                if audit in path:
                    assert r.status_code in (403, 404), (method, path, r.status_code)
                for part, doc in _documents(r):
                    where = f"{method} {template} {part}"
                    texts.append((f"{method} {path} {part}", json.dumps(doc, ensure_ascii=False)))
                    for location, value in _numbers(doc):
                        found[where + location][tag].append(value)
    assert calls > 60

    leaks = []
    for where, by_job in found.items():
        if None in by_job:
            leaks += [(where, name, v) for v in by_job[None] for name in _matches(v, every_exact)]
        named = [{n for v in by_job.get(j, []) for n in _matches(v, exact[j])} for j in trained]
        # A noisy count may round to the exact one in one job; an exact one does in every job.
        if all(named) and set.intersection(*named):
            leaks.append((where, sorted(set.intersection(*named)), [by_job[j] for j in trained]))
    assert not leaks, leaks
    for where, text in texts:
        assert not any(t.lower() in text.lower() for t in DATA_TEXT), (where, text[:300])
    # The job logs say what ran, with the ε asked for and the ε spent; no loss, no count.
    ana = login(client, "ana")
    for job in trained:
        card = client.get(f"/api/v1/jobs/{job}/card", headers=ana).json()
        log = client.get(f"/api/v1/jobs/{job}/log", headers=ana).json()["log"]
        allowed = {1.0, round(card["privacy"]["epsilon"], 4)}
        assert {v for _, v in _numbers(log)} <= allowed, log
