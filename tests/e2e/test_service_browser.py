"""The dashboard in headless Chromium against `securetrain serve` (uvicorn and its worker
process): an analyst logs in, sees only the dataset granted to them, submits a job, watches it
finish and downloads the signed bundle, with no way to audit it; another owner's dataset stays
out of reach. The dataset's owner then audits the model and views the report with its plots."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from securetrain.bundle import verify_bundle
from securetrain.crypto.keys import KeySetPaths
from tests.service_world import PASSWORD, build_world

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("SECURETRAIN_TEST_BROWSER") == "required":
        raise RuntimeError("Chromium and ChromeDriver are required (.ci/browser.sh installs them)")
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, method: str, path: str, token: str | None = None, body=None):  # type: ignore[no-untyped-def]
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def served(tmp_path: Path):
    url = os.environ.get("SECURETRAIN_TEST_PG")
    if url:
        from tests.conftest import _pg_database

        url = _pg_database()
    world = build_world(tmp_path, url or f"sqlite:///{tmp_path / 'store.db'}")
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "securetrain",
            "serve",
            "--data-dir",
            str(world.settings.data_dir),
            "--key",
            str(world.settings.key_dir),
            "--results",
            str(world.settings.results_dir),
            "--store",
            world.settings.store or "",
            "--port",
            str(port),
        ],
        stdout=(tmp_path / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            _call(base, "GET", "/api/v1/health")
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "serve.log").read_text()) from None
            time.sleep(0.5)
    try:
        yield world, base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _click(driver: webdriver.Chrome, by: str, selector: str) -> bool:
    """Click a button of the jobs table, which the page redraws every 2 s."""
    try:
        driver.find_element(by, selector).click()
    except (NoSuchElementException, StaleElementReferenceException):
        return False
    return True


def _browser(downloads: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def test_analyst_trains_and_downloads_and_the_owner_audits_in_the_browser(
    served, tmp_path: Path
) -> None:
    world, base = served
    login = lambda name: _call(  # noqa: E731
        base, "POST", "/api/v1/auth/login", body={"name": name, "password": PASSWORD}
    )["token"]
    alice, oscar = login("alice"), login("oscar")
    mine = _call(
        base,
        "POST",
        "/api/v1/datasets",
        alice,
        {"path": "ward-a.sealed", "require_approval": False},
    )
    _call(base, "POST", f"/api/v1/datasets/{mine['id']}/grants", alice, {"analyst": "ana"})
    other = _call(base, "POST", "/api/v1/datasets", oscar, {"path": "ward-b.sealed"})
    _call(base, "POST", f"/api/v1/datasets/{other['id']}/grants", oscar, {"analyst": "bob"})

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _browser(downloads)
    wait = WebDriverWait(driver, 180)
    try:
        driver.get(base + "/")
        driver.find_element(By.ID, "login-name").send_keys("ana")
        driver.find_element(By.ID, "login-password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-button").click()
        wait.until(ec.visibility_of_element_located((By.ID, f"dataset-{mine['id']}")))
        assert "ana (analyst)" in driver.find_element(By.ID, "who").text
        assert not driver.find_elements(By.ID, f"dataset-{other['id']}")
        # Another owner's dataset: not listed, and not reachable with the analyst's session.
        status = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/v1/datasets/' + arguments[0], {headers: {Authorization: 'Bearer ' +"
            " sessionStorage.getItem('securetrain-token')}}).then(r => done(r.status));",
            other["id"],
        )
        assert status == 404
        driver.find_element(By.ID, "submit-epsilon").clear()
        driver.find_element(By.ID, "submit-epsilon").send_keys("1")
        driver.find_element(By.ID, "submit-epochs").send_keys("3")
        driver.find_element(By.ID, "submit-button").click()
        row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#jobs tr")))
        job_id = row.get_attribute("id").removeprefix("job-")
        wait.until(
            lambda d: (
                "succeeded" in d.find_element(By.CSS_SELECTOR, f"#job-{job_id} .job-state").text
            )
        )
        progress = driver.find_element(By.CSS_SELECTOR, f"#job-{job_id} progress")
        assert float(progress.get_attribute("value")) == 1.0
        wait.until(lambda d: _click(d, By.ID, f"card-{job_id}"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "verify-status"), "verified"))
        wait.until(lambda d: _click(d, By.ID, f"download-{job_id}"))
        target = downloads / f"securetrain-{job_id}.zip"
        wait.until(lambda _d: target.exists() and target.stat().st_size > 0)
        # Audits are exact statistics over the training rows: the analyst cannot start one.
        assert not driver.find_elements(By.ID, f"audit-{job_id}")
        driver.find_element(By.ID, "logout-button").click()
        wait.until(ec.visibility_of_element_located((By.ID, "login-name")))
        for field, text in (("login-name", "alice"), ("login-password", PASSWORD)):
            driver.find_element(By.ID, field).clear()
            driver.find_element(By.ID, field).send_keys(text)
        driver.find_element(By.ID, "login-button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "alice (owner)"))
        # The owner audits the model: its report, with plots, shows in the dashboard.
        wait.until(lambda d: _click(d, By.ID, f"audit-{job_id}"))
        wait.until(lambda d: _click(d, By.XPATH, "//table//button[text()='Report']"))
        frame = wait.until(ec.visibility_of_element_located((By.ID, "result-report")))
        driver.switch_to.frame(frame)
        assert driver.find_elements(By.TAG_NAME, "svg"), "the audit report has its plots"
        driver.switch_to.default_content()
    finally:
        driver.quit()
    out = tmp_path / "bundle"
    zipfile.ZipFile(target).extractall(out)
    card = verify_bundle(out / "bundle", KeySetPaths(world.settings.key_dir).public_key)
    assert card.privacy.epsilon <= 1.0 + 1e-9
