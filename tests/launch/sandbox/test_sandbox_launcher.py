"""The EHR launcher and pages, standalone and mounted at ``/ehr`` under another app."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urljoin

import httpx2
import pytest
from fastapi import FastAPI

from launch.sandbox import SandboxStore, create_sandbox_app
from launch.sandbox.keys import SigningKey
from tests.launch.sandbox.conftest import make_config
from tests.launch.sandbox.sandbox_support import (
    APP_LAUNCH_PATH,
    SmartClient,
    build_resources,
    query_of,
    serve,
)


@pytest.fixture(scope="module")
def mounted(signing_key: SigningKey) -> Iterator[SmartClient]:
    """The sandbox mounted at ``/ehr`` inside a FastAPI app, served by uvicorn."""

    def build(origin: str) -> object:
        parent = FastAPI()

        @parent.get("/healthz")
        def healthz() -> dict[str, str]:
            return {"status": "ok"}

        sandbox = create_sandbox_app(
            make_config(origin, f"{origin}/ehr"),
            SandboxStore(build_resources()),
            signing_key=signing_key,
        )
        parent.mount("/ehr", sandbox)
        return parent

    with serve(build) as origin, httpx2.Client(timeout=10) as http:
        yield SmartClient(http=http, base=f"{origin}/ehr", origin=origin)


def test_patients_json(sandbox: SmartClient) -> None:
    response = sandbox.http.get(f"{sandbox.base}/patients")
    assert response.status_code == 200
    assert response.json() == [
        {"id": "pat-a", "name": "Ada Lovelace"},
        {"id": "pat-b", "name": "Bob Builder"},
    ]


def test_index_page_lists_patients_with_launch_links(sandbox: SmartClient) -> None:
    response = sandbox.http.get(f"{sandbox.base}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "Ada Lovelace" in page
    assert "1980-12-10" in page
    assert "female" in page
    assert 'href="launch?patient=pat-a" data-patient-id="pat-a"' in page
    assert 'data-patient-id="pat-b"' in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_launch_redirects_to_app_with_iss_and_launch(sandbox: SmartClient) -> None:
    response = sandbox.http.get(f"{sandbox.base}/launch", params={"patient": "pat-b"})
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(f"{sandbox.origin}{APP_LAUNCH_PATH}?")
    query = query_of(location)
    assert query["iss"] == sandbox.fhir
    assert len(query["launch"]) >= 20
    other = query_of(
        sandbox.http.get(f"{sandbox.base}/launch", params={"patient": "pat-b"}).headers["location"]
    )
    assert other["launch"] != query["launch"]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"patient": "nobody"},
        {"patient": "pat-a", "practitioner": "nobody"},
        {"patient": "pat-a", "encounter": "nope"},
    ],
    ids=["no-patient", "unknown-patient", "unknown-practitioner", "unknown-encounter"],
)
def test_launch_rejects_unknown_context(sandbox: SmartClient, params: dict[str, str]) -> None:
    response = sandbox.http.get(f"{sandbox.base}/launch", params=params)
    assert response.status_code == 404
    assert response.json()["error"].startswith("unknown_")


def test_launch_with_explicit_practitioner(sandbox: SmartClient) -> None:
    token = sandbox.ehr_token(
        "launch openid fhirUser patient/*.rs", patient="pat-a", practitioner="prac-1"
    )
    introspected = sandbox.http.post(
        f"{sandbox.base}/auth/introspect",
        data={"token": token["access_token"], "client_id": "chartcite"},
    ).json()
    assert introspected["fhirUser"] == "Practitioner/prac-1"


def test_smart_style_document(sandbox: SmartClient) -> None:
    style = sandbox.http.get(f"{sandbox.base}/smart-style.json").json()
    assert style["color_highlight"].startswith("#")


def test_mounted_sandbox_uses_configured_base_url(mounted: SmartClient) -> None:
    assert mounted.http.get(f"{mounted.origin}/healthz").json() == {"status": "ok"}
    config = mounted.http.get(f"{mounted.fhir}/.well-known/smart-configuration").json()
    assert config["authorization_endpoint"] == f"{mounted.origin}/ehr/auth/authorize"
    assert config["issuer"] == f"{mounted.origin}/ehr/fhir"


def test_mounted_sandbox_full_flow_from_index_page(mounted: SmartClient) -> None:
    page = mounted.http.get(f"{mounted.base}/").text
    href = re.search(r'href="([^"]+)" data-patient-id="pat-a"', page)
    assert href is not None
    launch_url = urljoin(f"{mounted.base}/", href.group(1).replace("&amp;", "&"))
    assert launch_url == f"{mounted.base}/launch?patient=pat-a"
    redirect = mounted.http.get(launch_url)
    assert redirect.status_code == 302
    launch_id = query_of(redirect.headers["location"])["launch"]

    code = mounted.code_from(
        mounted.authorize("launch openid fhirUser patient/*.rs", launch=launch_id)
    )
    token = mounted.exchange(code).json()
    assert token["patient"] == "pat-a"
    bundle = mounted.get(f"{mounted.fhir}/Condition", token["access_token"], patient="pat-a").json()
    assert bundle["entry"][0]["fullUrl"] == f"{mounted.origin}/ehr/fhir/Condition/cond-a1"
    assert bundle["link"][0]["url"].startswith(f"{mounted.origin}/ehr/fhir/Condition?")
