"""Facts about the sandbox's data, read straight from the sandbox store (never hard-coded)."""

from __future__ import annotations

from typing import Any

from launch.sandbox import SandboxStore

HBA1C = "4548-4"


def patient_ref(resource: dict[str, Any]) -> str | None:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/"):
            return str(ref["reference"]).split("/", 1)[1]
    return None


def owned(store: SandboxStore, patient_id: str, resource_type: str) -> list[dict[str, Any]]:
    return [r for r in store.of_type(resource_type) if patient_ref(r) == patient_id]


def owner_of(store: SandboxStore, ref: str) -> str | None:
    rtype, rid = ref.split("/", 1)
    resource = store.get(rtype, rid)
    if resource is None:
        return None
    if rtype == "Patient":
        return str(resource["id"])
    return patient_ref(resource)


def codes(resource: dict[str, Any], key: str = "code") -> set[str]:
    concept = resource.get(key) or {}
    return {c.get("code") for c in concept.get("coding", []) if c.get("code")}


def display(resource: dict[str, Any], key: str = "code") -> str:
    concept = resource.get(key) or {}
    return str(concept.get("text") or (concept.get("coding") or [{}])[0].get("display") or "")


def hba1c_patient(store: SandboxStore) -> str:
    """The patient with the most HbA1c results."""
    counts: dict[str, int] = {}
    for obs in store.of_type("Observation"):
        if HBA1C in codes(obs) and (pid := patient_ref(obs)):
            counts[pid] = counts.get(pid, 0) + 1
    return max(sorted(counts), key=lambda p: counts[p])


def code_flow_token(
    base_url: str,
    ehr_path: str,
    patient: str,
    *,
    client_id: str,
    scope: str = "launch patient/*.rs",
    secret: str | None = None,
) -> str:
    """An access token a sandbox EHR issues to an app by its own authorization-code flow (EHR
    launch, PKCE S256; a confidential client authenticates with form-encoded Basic, RFC 6749
    §2.3.1)."""
    import base64
    import hashlib
    import secrets
    from urllib.parse import parse_qs, quote_plus, urlsplit

    import httpx2

    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    redirect = base_url + "/callback"
    with httpx2.Client(base_url=base_url, follow_redirects=False, timeout=30) as c:
        launch = c.get(f"{ehr_path}/launch?patient={patient}")
        launch_id = parse_qs(urlsplit(launch.headers["location"]).query)["launch"][0]
        auth = c.get(
            f"{ehr_path}/auth/authorize",
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect,
                "scope": scope,
                "state": secrets.token_urlsafe(16),
                "aud": f"{base_url}{ehr_path}/fhir",
                "launch": launch_id,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        code = parse_qs(urlsplit(auth.headers["location"]).query)["code"][0]
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect}
        headers = {}
        if secret is None:
            form["client_id"] = client_id
        else:
            pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        token = c.post(
            f"{ehr_path}/auth/token", data={**form, "code_verifier": verifier}, headers=headers
        )
        token.raise_for_status()
        return str(token.json()["access_token"])
