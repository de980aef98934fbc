"""Bad input, limits and headers through HTTP: every bad request is a 4xx with the error envelope,
nothing reaches a log with request data, PHI responses are not cached, the page cannot be framed
by anyone but a registered EHR."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import closing

import httpx2
import pytest

from launch.db import Database
from launch.demo_client import launch_patient
from launch.server import BackgroundServer, build_demo, free_port, sandbox_store
from launch.settings import Settings
from tests.conftest import RunningDemo
from tests.integration.conftest import Synced


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name}: {text}")


@pytest.fixture
def server_log() -> Iterator[Captured]:
    handler = Captured()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in ("uvicorn", "uvicorn.error", "chartcite"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


BAD_QUESTIONS = [
    "a1c\x00 trend",
    "\ud800 meds",
    "bp\x07?",
    "\x1b[31mred\x1b[0m",
]


@pytest.mark.parametrize("question", BAD_QUESTIONS, ids=["nul", "surrogate", "bell", "ansi"])
def test_control_characters_and_surrogates_are_422(
    patient_a: Synced, server_log: Captured, question: str
) -> None:
    body = '{"question": "' + question.encode("unicode_escape").decode().replace('"', '\\"') + '"}'
    if question.startswith("\ud800"):
        body = '{"question": "\\ud800 meds"}'
    r = patient_a.client.post(
        "/api/ask", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert all("Traceback" not in line for line in server_log.lines)


@pytest.mark.parametrize(
    "path",
    [
        "/launch?iss=%00",
        "/launch?iss=http://127.0.0.1/fhir%00&launch=x",
        "/callback?state=%00&code=x",
        "/api/resources/Observation/%00",
        "/api/resources/Observation/%ED%A0%80",
        "/api/resources/Obs%00ervation/x",
        "/api/sync/%00",
        "/api/answers/%C0%AF",
    ],
)
def test_bad_bytes_in_urls_never_500(
    demo: RunningDemo, patient_a: Synced, server_log: Captured, path: str
) -> None:
    with httpx2.Client(base_url=demo.base_url, timeout=30) as browser:
        client = patient_a.client if path.startswith("/api") else browser
        r = client.get(path)
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
        assert r.json()["error"]["code"] if path.startswith("/api") else "<html>" in r.text
        assert "Traceback" not in r.text
        for line in server_log.lines:
            assert "Traceback" not in line and patient_a.patient_id not in line, line
        # The connection still serves the next request.
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/api/sync", "/api/ask", "/callback"])
def test_a_body_that_is_not_utf8_is_422(patient_a: Synced, path: str) -> None:
    """Found by the stateful contract fuzz: FastAPI answers bytes it cannot decode with a bare
    400 that the contract does not list; chartcite answers them as invalid input."""
    r = patient_a.client.post(
        path, content=b"\xdb\xa45&\xf3\x11\xff", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, (r.status_code, r.text[:200])
    assert r.json()["error"]["code"] == "invalid_request"


def test_a_body_over_the_limit_is_413_without_reading_it(patient_a: Synced) -> None:
    big = b'{"question": "' + b"a" * (70 * 1024) + b'"}'
    r = patient_a.client.post("/api/ask", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"question": "'
        for _ in range(80):
            yield b"a" * 1024
        yield b'"}'

    r = patient_a.client.post(
        "/api/ask", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    ok = patient_a.client.post("/api/ask", json={"question": "a1c?"})
    assert ok.status_code == 200


def test_security_headers(demo: RunningDemo, patient_a: Synced) -> None:
    api = patient_a.client.get("/api/context")
    assert api.headers["cache-control"] == "no-store"
    assert api.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in api.headers["content-security-policy"]
    page = patient_a.client.get("/")
    csp = page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert "'unsafe-inline'" not in csp and "script-src 'sha256-" in csp
    # The page runs inside the registered EHR's iframe, and nobody else's.
    assert f"frame-ancestors 'self' {demo.base_url}" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp


@pytest.fixture(scope="module")
def limited(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo with tight limits: 5 requests a minute per session, 12 per client address."""
    port = free_port()
    settings = Settings(
        env="dev",
        data_dir=tmp_path_factory.mktemp("limited"),
        port=port,
        rate_limit_session_per_minute=5,
        rate_limit_client_per_minute=12,
    )
    built = build_demo(settings, sandbox_store(patients=2), database=database)
    server = BackgroundServer(built.app, "127.0.0.1", port)
    server.start()
    yield settings.base_url
    server.stop()


def test_rate_limits_per_session_and_per_client(limited: str) -> None:
    one, _ = launch_patient(limited, "pat-0001")
    two, _ = launch_patient(limited, "pat-0002")
    with closing(one), closing(two):
        codes = [one.get("/api/context").status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        over = one.get("/api/context")
        assert over.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(over.headers["retry-after"]) <= 60
        # Another session is not slowed by the first one's excess ...
        assert [two.get("/api/context").status_code for _ in range(5)] == [200] * 5
        # ... but the client address as a whole is (12 a minute, the refusals included).
        assert two.get("/api/context").status_code == 429
        assert one.get("/healthz").status_code == 200  # only /api/* is limited


def test_mcp_is_limited_like_the_api(limited: str) -> None:
    """/mcp is behind the same guard: the per-client limit ends in 429 with Retry-After."""
    with httpx2.Client(base_url=limited, timeout=30) as client:
        codes = []
        for _ in range(14):
            r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            codes.append(r.status_code)
            if r.status_code == 429:
                break
        assert codes[-1] == 429, codes
        assert r.json()["error"]["code"] == "rate_limited" and r.headers["retry-after"]
        assert r.headers["cache-control"] == "no-store"


def test_the_log_scan_finds_what_it_looks_for() -> None:
    """The session-wide log scan (tests/conftest.py) is not hollow."""
    from launch.sandbox import generate_patients
    from tests.conftest import _identifiers, phi_hits

    ids = _identifiers(
        generate_patients(n_patients=2, seed=7, today=__import__("datetime").date.today())
    )
    patient = next(i for i in ids if i.startswith("pat-"))
    lines = [
        "chartcite.access INFO GET /api/context 200 3.1ms",
        f"httpx2 INFO HTTP Request: GET http://x/ehr/launch?patient={patient}",
    ]
    assert [hit for _, hit in phi_hits(lines, ids)] == [patient]
    assert phi_hits(["pat-00012 is another id"], {"pat-0001"}) == []  # whole tokens only


def test_405_names_the_allowed_methods(patient_a: Synced) -> None:
    r = patient_a.client.delete("/api/context")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["allow"]


def test_api_docs_work_on_a_closed_network(demo: RunningDemo) -> None:
    with httpx2.Client(base_url=demo.base_url, timeout=30) as c:
        page = c.get("/docs")
        assert page.status_code == 200
        assert "cdn." not in page.text and "unpkg" not in page.text
        js = next(part.split('"')[0] for part in page.text.split('src="')[1:] if ".js" in part)
        assert c.get(js).status_code == 200 and len(c.get(js).content) > 100_000
        assert "cdn." not in c.get("/redoc").text


def test_openapi_documents_the_real_error_envelope(demo: RunningDemo, patient_a: Synced) -> None:
    """Real error responses are documented for their route, with the schema they really have."""
    doc = patient_a.client.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error = doc["components"]["schemas"]["Error"]
    observed = [
        ("/api/ask", "post", patient_a.client.post("/api/ask", json={"question": ""})),
        ("/api/ask", "post", patient_a.client.post("/api/ask", json={"nope": 1})),
        (
            "/api/resources/{resource_type}/{resource_id}",
            "get",
            patient_a.client.get("/api/resources/Observation/not-there"),
        ),
        ("/api/context", "get", httpx2.get(demo.base_url + "/api/context", timeout=30)),
        ("/api/answers/{answer_id}", "get", patient_a.client.get("/api/answers/nope")),
    ]
    for path, method, response in observed:
        documented = doc["paths"][path][method]["responses"]
        assert str(response.status_code) in documented, (path, response.status_code)
        body = response.json()
        assert set(body) == set(error["required"]) and set(body["error"]) == {"code", "message"}
        schema = documented[str(response.status_code)]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
