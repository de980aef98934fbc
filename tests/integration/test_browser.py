"""Real Chromium: the sandbox EHR's patient list → Launch → the clinician page syncs and answers;
and the same inside the EHR's chart page as a cross-site iframe with third-party cookies blocked."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import RunningDemo
from tests.integration.helpers import hba1c_patient, owner_of
from tests.integration.test_smart_sessions import _patients, _until_callback

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.browser


def _chromium(prefs: dict[str, object] | None = None) -> Iterator[object]:
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
    if prefs:
        options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[object]:
    yield from _chromium()


@pytest.fixture
def strict_browser() -> Iterator[object]:
    """Chromium that blocks third-party cookies, as hospital browsers and Safari do."""
    yield from _chromium(
        {"profile.cookie_controls_mode": 1, "profile.block_third_party_cookies": True}
    )


def _sync_and_ask(driver: object, demo: RunningDemo, pid: str) -> list[str]:
    """On the clinician's page: wait for the sync, check the banner, ask, return the citations."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

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
    chips = driver.find_elements(By.CSS_SELECTOR, "#statements a.cite")  # type: ignore[attr-defined]
    links = [a.get_attribute("data-ref") for a in chips]
    assert "Traceback" not in driver.page_source  # type: ignore[attr-defined]
    return links


def test_launch_sync_and_ask_in_a_browser(demo: RunningDemo, browser: object) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    pid = hba1c_patient(demo.store)
    driver.get(f"{demo.base_url}/ehr/")  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, f'a.launch[data-patient-id="{pid}"]').click()  # type: ignore[attr-defined]
    links = _sync_and_ask(driver, demo, pid)
    assert links and all(link.startswith("Observation/") for link in links)
    assert all(owner_of(demo.store, link) == pid for link in links)


def test_launch_inside_a_cross_site_ehr_iframe_with_third_party_cookies_blocked(
    demo: RunningDemo, strict_browser: object
) -> None:
    """The EHR's chart page at http://localhost:PORT frames the app at http://127.0.0.1:PORT
    (another site). No pre-auth cookie survives there; the tab's own launch secret carries the
    sign-in, and a callback link minted in another browser is refused on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = strict_browser
    pid = hba1c_patient(demo.store)
    ehr_site = demo.base_url.replace("127.0.0.1", "localhost")
    assert ehr_site != demo.base_url
    driver.get(f"{ehr_site}/ehr/embedded?patient={pid}")  # type: ignore[attr-defined]
    driver.switch_to.frame(driver.find_element(By.ID, "app"))  # type: ignore[attr-defined]
    links = _sync_and_ask(driver, demo, pid)
    assert links and all(owner_of(demo.store, link) == pid for link in links)
    # The sign-in did not ride on a cookie: the browser holds none of chartcite's.
    cookies = driver.execute_cdp_cmd("Storage.getCookies", {})["cookies"]  # type: ignore[attr-defined]
    assert not [c["name"] for c in cookies if "chartcite" in c["name"]]

    # Login CSRF: a callback link from someone else's launch, opened in this browser.
    with httpx2.Client(base_url=demo.base_url, follow_redirects=False, timeout=30) as other:
        link = _until_callback(other, next(p for p in _patients(demo) if p != pid))
    driver.switch_to.default_content()  # type: ignore[attr-defined]
    driver.get(link)  # type: ignore[attr-defined]
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-error")
    )
    body = driver.find_element(By.TAG_NAME, "body")  # type: ignore[attr-defined]
    assert body.get_attribute("data-error") == "state_not_this_browser"
    assert "another browser" in body.text
    assert driver.execute_script("return sessionStorage.getItem('chartcite-session')") is None  # type: ignore[attr-defined]
