"""One browser test: the sandbox EHR's patient list → Launch → the clinician page syncs and answers."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.conftest import RunningDemo
from tests.integration.helpers import hba1c_patient, owner_of

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.browser


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CHARTCITE_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "chromium and chromium-driver are required (apt-get install chromium chromium-driver)"
            )
        pytest.skip("chromium/chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cc-chrome-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_launch_sync_and_ask_in_a_browser(demo: RunningDemo, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    pid = hba1c_patient(demo.store)
    driver.get(f"{demo.base_url}/ehr/")  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, f'[data-patient-id="{pid}"]').click()  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 120)
    wait.until(
        lambda d: (
            d.find_element(By.ID, "sync-status").get_attribute("data-status")
            in ("done", "partial", "failed")
        )
    )
    assert driver.find_element(By.ID, "sync-status").get_attribute("data-status") == "done"  # type: ignore[attr-defined]
    patient = demo.store.get("Patient", pid)
    assert patient is not None
    wait.until(lambda d: patient["name"][0]["family"] in d.find_element(By.ID, "banner").text)
    wait.until(ec.element_to_be_clickable((By.ID, "ask")))
    driver.find_element(By.ID, "question").send_keys("HbA1c over the last 18 months?")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "ask").click()  # type: ignore[attr-defined]
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#statements a.cite"))
    links = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#statements a.cite")]  # type: ignore[attr-defined]
    assert links and all(link.startswith("Observation/") for link in links)
    assert all(owner_of(demo.store, link) == pid for link in links)
    assert "Traceback" not in driver.page_source  # type: ignore[attr-defined]
