"""Test support for the sandbox EHR: small FHIR data set, real uvicorn server, SMART client."""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import uvicorn
from joserfc import jwt
from joserfc.jwk import Key, KeySet

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: An EHR launch asking for everything: OIDC, a refresh token and the patient's data.
FULL_SCOPE = "launch openid fhirUser offline_access patient/*.rs"
#: A backend service (client credentials) that authenticates with private_key_jwt.
BACKEND_ID = "backend-app"
CLIENT_ID = "chartcite"
SECRET_CLIENT_ID = "confidential-app"
CLIENT_SECRET = "s3cret-value"
APP_LAUNCH_PATH = "/app/launch"
APP_CALLBACK_PATH = "/app/callback"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
N_OBSERVATIONS_A = 120  # plus one vital sign: 121 Observations for patient A


class FakeClock:
    """A settable clock shared by the sandbox under test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _ref(target: str) -> dict[str, str]:
    return {"reference": target}


def _obs(
    oid: str, patient: str, code: str, display: str, when: str, category: str
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"lastUpdated": f"{when}T12:00:00Z"},
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": _ref(f"Patient/{patient}"),
        "effectiveDateTime": when,
        "valueQuantity": {"value": 7.0, "unit": "%"},
    }


def build_resources() -> list[dict[str, Any]]:
    """Two patients (A has 121 Observations), a practitioner, meds, notes and Binaries."""
    text = base64.b64encode(b"Progress note: HbA1c improving.").decode()
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Practitioner",
            "id": "prac-1",
            "name": [{"family": "Smith", "given": ["Alice"]}],
        },
        {
            "resourceType": "Patient",
            "id": "pat-a",
            "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
            "name": [{"family": "Lovelace", "given": ["Ada"]}],
            "gender": "female",
            "birthDate": "1980-12-10",
        },
        {
            "resourceType": "Patient",
            "id": "pat-b",
            "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
            "name": [{"family": "Builder", "given": ["Bob"]}],
            "gender": "male",
            "birthDate": "1975-01-02",
        },
        {"resourceType": "Organization", "id": "org-1", "name": "Sandbox Clinic"},
        {
            "resourceType": "Encounter",
            "id": "enc-a1",
            "status": "finished",
            "subject": _ref("Patient/pat-a"),
            "period": {"start": "2024-03-01T09:00:00Z", "end": "2024-03-01T09:30:00Z"},
        },
        {
            "resourceType": "Condition",
            "id": "cond-a1",
            "category": [{"coding": [{"code": "problem-list-item"}]}],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            "subject": _ref("Patient/pat-a"),
            "onsetDateTime": "2019-05-01",
            "recordedDate": "2019-05-02",
        },
        {
            "resourceType": "Medication",
            "id": "med-metformin",
            "code": {"coding": [{"system": RXNORM, "code": "860975", "display": "metformin"}]},
        },
        {"resourceType": "Medication", "id": "med-other", "code": {"text": "other"}},
        {
            "resourceType": "MedicationRequest",
            "id": "mr-a1",
            "status": "active",
            "intent": "order",
            "subject": _ref("Patient/pat-a"),
            "medicationReference": _ref("Medication/med-metformin"),
            "authoredOn": "2021-01-01",
        },
        {
            "resourceType": "MedicationRequest",
            "id": "mr-a2",
            "status": "stopped",
            "intent": "order",
            "subject": _ref("Patient/pat-a"),
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "29046"}]},
            "authoredOn": "2022-06-01",
        },
        {
            "resourceType": "MedicationRequest",
            "id": "mr-b1",
            "status": "active",
            "intent": "order",
            "subject": _ref("Patient/pat-b"),
            "medicationReference": _ref("Medication/med-other"),
            "authoredOn": "2021-01-01",
        },
        {
            "resourceType": "DocumentReference",
            "id": "doc-a1",
            "status": "current",
            "subject": _ref("Patient/pat-a"),
            "date": "2024-03-01T10:00:00Z",
            "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/bin-a1"}}],
        },
        {
            "resourceType": "DocumentReference",
            "id": "doc-a2",
            "status": "current",
            "subject": _ref("Patient/pat-a"),
            "date": "2024-04-01T10:00:00Z",
            "content": [{"attachment": {"contentType": "text/plain", "data": text}}],
        },
        {
            "resourceType": "DocumentReference",
            "id": "doc-b1",
            "status": "current",
            "subject": _ref("Patient/pat-b"),
            "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/bin-b1"}}],
        },
        {"resourceType": "Binary", "id": "bin-a1", "contentType": "text/plain", "data": text},
        {"resourceType": "Binary", "id": "bin-b1", "contentType": "text/plain", "data": text},
        {"resourceType": "Binary", "id": "bin-orphan", "contentType": "text/plain", "data": text},
        _obs("obs-a-bp", "pat-a", "85354-9", "Blood pressure", "2024-02-01", "vital-signs"),
    ]
    start = date(2020, 1, 1)
    for i in range(N_OBSERVATIONS_A):
        when = (start + timedelta(days=10 * i)).isoformat()
        code, display = ("4548-4", "Hemoglobin A1c") if i % 2 == 0 else ("2345-7", "Glucose")
        resources.append(_obs(f"obs-a-{i:03d}", "pat-a", code, display, when, "laboratory"))
    for i in range(5):
        resources.append(
            _obs(f"obs-b-{i}", "pat-b", "4548-4", "Hemoglobin A1c", "2023-01-01", "laboratory")
        )
    return resources


def drug_concept(order: dict[str, Any], by_key: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An order's drug: inline, in a contained Medication (``#m1``) or a Medication resource."""
    if "medicationCodeableConcept" in order:
        return order["medicationCodeableConcept"]  # type: ignore[no-any-return]
    ref = order["medicationReference"]["reference"]
    if ref.startswith("#"):
        med = next(c for c in order["contained"] if c["id"] == ref[1:])
        return med["code"]  # type: ignore[no-any-return]
    return by_key[ref]["code"]  # type: ignore[no-any-return]


@contextmanager
def serve(build_app: Callable[[str], Any]) -> Iterator[str]:
    """Run ``build_app(origin)`` under uvicorn on a free loopback port; yield the origin URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        build_app(origin),
        lifespan="off",
        ws="none",
        http="h11",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield origin
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def pkce_pair() -> tuple[str, str]:
    """An RFC 7636 verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def query_of(url: str) -> dict[str, str]:
    """The query parameters of a URL (first values)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


@dataclass
class SmartClient:
    """Plays the SMART app against a running sandbox (EHR launch, authorize, token)."""

    http: httpx2.Client
    base: str  # the sandbox base URL (…/ehr or origin)
    origin: str
    client_id: str = CLIENT_ID
    last_verifier: str = field(default="", repr=False)

    @property
    def fhir(self) -> str:
        return f"{self.base}/fhir"

    @property
    def redirect_uri(self) -> str:
        return f"{self.origin}{APP_CALLBACK_PATH}"

    def launch(self, **params: str) -> str:
        """``GET {base}/launch``; returns the opaque launch id from the redirect."""
        response = self.http.get(f"{self.base}/launch", params=params)
        assert response.status_code == 302, response.text
        location = response.headers["location"]
        assert location.startswith(f"{self.origin}{APP_LAUNCH_PATH}?")
        query = query_of(location)
        assert query["iss"] == self.fhir
        return query["launch"]

    def authorize(self, scope: str, /, **overrides: str | None) -> httpx2.Response:
        """``GET {base}/auth/authorize`` with PKCE S256; ``overrides`` replace/remove params."""
        verifier, challenge = pkce_pair()
        self.last_verifier = verifier
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": scope,
            "state": "state-123",
            "aud": self.fhir,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "nonce": secrets.token_urlsafe(8),
        }
        params.update(overrides)
        sent = {k: v for k, v in params.items() if v is not None}
        return self.http.get(f"{self.base}/auth/authorize", params=sent)

    def code_from(self, response: httpx2.Response) -> str:
        assert response.status_code == 302, response.text
        query = query_of(response.headers["location"])
        assert "error" not in query, query
        assert query["state"] == "state-123"
        return query["code"]

    def exchange(self, code: str, verifier: str | None = None, **extra: str) -> httpx2.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": verifier if verifier is not None else self.last_verifier,
            **extra,
        }
        return self.http.post(f"{self.base}/auth/token", data=data)

    def ehr_token(self, scope: str, /, **launch_params: str) -> dict[str, Any]:
        """Launch for a patient, authorize and exchange the code: the token response JSON."""
        launch_id = self.launch(**launch_params)
        code = self.code_from(self.authorize(scope, launch=launch_id))
        response = self.exchange(code)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def get(self, url: str, token: str | None, **params: Any) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.get(url, params=params or None, headers=headers)


def client_assertion(
    key: Key,
    *,
    client_id: str,
    aud: str,
    now: float,
    alg: str = "RS384",
    kid: str | None = None,
    lifetime: int = 240,
    **claims: Any,
) -> str:
    """An RFC 7523 client assertion; ``claims`` override (``None`` drops) the standard ones."""
    body: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": int(now) + lifetime,
        "jti": secrets.token_urlsafe(12),
    }
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}
    header = {"alg": alg, "kid": kid if kid is not None else key.kid, "typ": "JWT"}
    return jwt.encode(header, body, key, algorithms=[alg])


def public_jwks(*keys: Key) -> dict[str, Any]:
    """The JWK Set an asymmetric app registers: the public halves of ``keys``."""
    return dict(KeySet(list(keys)).as_dict(private=False))


def assertion_form(assertion: str) -> dict[str, str]:
    """The token-request fields that carry a client assertion (RFC 7523 §2.2)."""
    return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}


#: ``with sandbox_factory(clock=…, clients=…, jwks_fetcher=…, **config_overrides) as client:``
#: (fixture in conftest.py)
SandboxFactory = Callable[..., AbstractContextManager[SmartClient]]
#: Extra clients to register, given the sandbox's origin (for redirect URIs and jwks_uri).
ClientsFor = Callable[[str], Sequence[Any]]
