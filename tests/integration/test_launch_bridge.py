"""The launch as a browser sees it, with no cookies at all (an EHR iframe with third-party cookies
blocked): ``/launch`` answers with a page that keeps a per-launch secret in the tab, ``/callback``
with a page that posts it back. Through HTTP against the demo; the same flow in a real Chromium
inside a cross-site iframe is in ``test_browser.py``."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx2

from launch.demo_client import SESSION_HEADER
from tests.conftest import RunningDemo
from tests.integration.test_smart_sessions import _audited, _patients

BROWSER = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "iframe",
}


@dataclass
class Tab:
    """One browser tab that keeps no cookies: what its page scripts would hold."""

    client: httpx2.Client
    state: str
    binding: str
    callback: str  # the callback URL the EHR sent this tab to
    launch_page: httpx2.Response
    authorize: str = ""

    def finish(self, binding: str | None = None) -> httpx2.Response:
        """What ``callback.html`` does: post the callback's parameters and the tab's secret."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.callback).query).items()}
        body = {
            "state": query.get("state", ""),
            "code": query.get("code"),
            "error": query.get("error"),
            "error_description": query.get("error_description"),
            "binding": self.binding if binding is None else binding,
        }
        return self.client.post("/callback", json=body)


def _get(client: httpx2.Client, url: str, **kw: object) -> httpx2.Response:
    response = client.get(url, **kw)  # type: ignore[arg-type]
    client.cookies.clear()  # the browser keeps nothing (third-party cookies blocked)
    return response


@contextmanager
def cookieless_tab(demo: RunningDemo, patient: str, **launch: str) -> Iterator[Tab]:
    with httpx2.Client(base_url=demo.base_url, follow_redirects=False, timeout=30) as c:
        params = "&".join(f"{k}={v}" for k, v in {"patient": patient, **launch}.items())
        to_app = _get(c, f"/ehr/launch?{params}", headers=BROWSER)
        page = _get(c, to_app.headers["location"], headers=BROWSER)
        assert page.status_code == 200, page.text[:300]
        block = re.search(
            r'<script type="application/json" id="launch-data">(.*?)</script>', page.text, re.DOTALL
        )
        assert block, "the launch page carries its data block"
        data = json.loads(block.group(1))
        response = _get(c, data["authorize"])
        for _ in range(4):
            location = response.headers["location"]
            if urlsplit(location).path == "/callback":
                break
            response = _get(c, location)
        yield Tab(c, data["state"], data["binding"], location, page, data["authorize"])


def test_launch_page_binds_the_tab_and_its_script_is_allowed_by_the_csp(
    demo: RunningDemo,
) -> None:
    with cookieless_tab(demo, _patients(demo)[0]) as tab:
        page = tab.launch_page
        assert "text/html" in page.headers["content-type"]
        assert page.headers["cache-control"] == "no-store"
        csp = page.headers["content-security-policy"]
        scripts = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
        assert len(scripts) == 1
        digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp  # the page's one script runs under its own CSP
        assert "unsafe-inline" not in csp
        assert tab.binding not in scripts[0]  # values travel in the data block, not the script
        # The authorize URL is where the page goes: PKCE S256 and this launch's state.
        authorize = parse_qs(urlsplit(tab.authorize).query)
        assert authorize["code_challenge_method"] == ["S256"]
        assert authorize["state"] == [tab.state]


def test_cookieless_callback_finishes_with_the_tabs_secret(demo: RunningDemo) -> None:
    patient = _patients(demo)[0]
    with cookieless_tab(demo, patient) as tab:
        # The callback page is served, and serving it consumes nothing (a reload is harmless).
        for _ in range(2):
            served = _get(tab.client, tab.callback, headers=BROWSER)
            assert served.status_code == 200 and "text/html" in served.headers["content-type"]
            assert "location" not in served.headers
        done = tab.finish()
        assert done.status_code == 200, done.text
        session = done.json()["session"]
        context = tab.client.get("/api/context", headers={SESSION_HEADER: session})
        assert context.status_code == 200
        assert context.json()["patient"] == f"Patient/{patient}"
        # The same callback again: the state is single-use.
        again = tab.finish()
        assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_state"


def test_cookieless_callback_with_another_tabs_secret_is_refused(demo: RunningDemo) -> None:
    attacker_patient, victim_patient = _patients(demo)[:2]
    before = _audited(demo, "launch", "state_not_this_browser")
    with (
        cookieless_tab(demo, attacker_patient) as attacker,
        cookieless_tab(demo, victim_patient) as victim,
    ):
        # The victim's tab opens the attacker's callback link: its own secret does not fit.
        planted = Tab(
            victim.client, attacker.state, victim.binding, attacker.callback, victim.launch_page
        )
        refused = planted.finish()
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "state_not_this_browser"
        assert "application/json" in refused.headers["content-type"]
        # No secret at all (a tab that never launched) is refused too.
        bare = Tab(victim.client, victim.state, "", victim.callback, victim.launch_page)
        assert bare.finish().status_code == 403
    assert _audited(demo, "launch", "state_not_this_browser") == before + 2


def test_cookieless_callback_carries_the_ehrs_error(demo: RunningDemo) -> None:
    before = _audited(demo, "launch", "ehr_access_denied")
    with cookieless_tab(demo, _patients(demo)[0], error="access_denied") as tab:
        refused = tab.finish()
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "ehr_access_denied"
        assert "Traceback" not in refused.text
    assert _audited(demo, "launch", "ehr_access_denied") == before + 1


def test_completion_rejects_malformed_bodies(demo: RunningDemo) -> None:
    with httpx2.Client(base_url=demo.base_url, timeout=30) as c:
        for body in (
            {},
            {"state": ""},
            {"state": "x", "binding": "y" * 600},
            {"state": "x", "z": 1},
        ):
            response = c.post("/callback", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"]["code"]
        form = c.post(
            "/callback",
            content=b"state=x&binding=y",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 422  # JSON only: a cross-site form cannot finish a sign-in
        unknown = c.post("/callback", json={"state": "not-ours", "binding": "b"})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "invalid_state"
