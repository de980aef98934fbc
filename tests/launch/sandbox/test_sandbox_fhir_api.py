"""The sandbox FHIR R4 API over real HTTP: discovery, read, search + paging, $everything, access."""

from __future__ import annotations

from typing import Any

import pytest

from tests.launch.sandbox.sandbox_support import N_OBSERVATIONS_A, SmartClient

ALL_READ = "launch openid fhirUser patient/*.rs"


@pytest.fixture(scope="module")
def token(sandbox: SmartClient) -> str:
    access: str = sandbox.ehr_token(ALL_READ, patient="pat-a")["access_token"]
    return access


def follow(sandbox: SmartClient, url: str, token: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of a search, following absolute ``next`` links; returns the bundles."""
    bundles = []
    response = sandbox.get(url, token, **params)
    while True:
        assert response.status_code == 200, response.text
        bundle = response.json()
        bundles.append(bundle)
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"].startswith(sandbox.fhir + "/")
        if "next" not in links:
            return bundles
        assert links["next"].startswith(sandbox.fhir + "/")
        response = sandbox.get(links["next"], token)


def ids(bundles: list[dict[str, Any]]) -> list[str]:
    return [e["resource"]["id"] for b in bundles for e in b.get("entry", [])]


def test_smart_configuration(sandbox: SmartClient) -> None:
    response = sandbox.http.get(f"{sandbox.fhir}/.well-known/smart-configuration")
    assert response.status_code == 200
    config = response.json()
    assert config["issuer"] == sandbox.fhir
    assert config["authorization_endpoint"] == f"{sandbox.base}/auth/authorize"
    assert config["token_endpoint"] == f"{sandbox.base}/auth/token"
    assert config["introspection_endpoint"] == f"{sandbox.base}/auth/introspect"
    assert config["revocation_endpoint"] == f"{sandbox.base}/auth/revoke"
    assert config["jwks_uri"] == f"{sandbox.base}/auth/jwks"
    assert {"private_key_jwt", "client_secret_basic", "client_secret_post", "none"} == set(
        config["token_endpoint_auth_methods_supported"]
    )
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["response_types_supported"] == ["code"]
    assert set(config["grant_types_supported"]) == {
        "authorization_code",
        "refresh_token",
        "client_credentials",  # confidential clients, system/ scopes (Bulk Data)
    }
    assert {
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-ehr-patient",
        "context-standalone-patient",
        "sso-openid-connect",
        "permission-patient",
        "permission-v1",
        "permission-v2",
        "permission-offline",
    } <= set(config["capabilities"])


def test_capability_statement(sandbox: SmartClient) -> None:
    response = sandbox.http.get(f"{sandbox.fhir}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    oauth = rest["security"]["extension"][0]
    assert oauth["url"].endswith("/oauth-uris")
    uris = {e["url"]: e["valueUri"] for e in oauth["extension"]}
    assert uris["authorize"] == f"{sandbox.base}/auth/authorize"
    assert uris["token"] == f"{sandbox.base}/auth/token"
    by_type = {r["type"]: r for r in rest["resource"]}
    assert {"Observation", "Condition", "MedicationRequest", "Patient"} <= set(by_type)
    assert by_type["Patient"]["operation"][0]["name"] == "everything"
    assert {"patient", "code", "date", "_lastUpdated"} <= {
        p["name"] for p in by_type["Observation"]["searchParam"]
    }


def test_read_own_patient_and_resources(sandbox: SmartClient, token: str) -> None:
    response = sandbox.get(f"{sandbox.fhir}/Observation/obs-a-007", token)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.json()["subject"] == {"reference": "Patient/pat-a"}


@pytest.mark.parametrize(
    "path", ["Patient/pat-b", "Observation/obs-b-0", "MedicationRequest/mr-b1"]
)
def test_read_other_patients_data_is_forbidden(sandbox: SmartClient, token: str, path: str) -> None:
    response = sandbox.get(f"{sandbox.fhir}/{path}", token)
    assert response.status_code == 403
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "forbidden"


@pytest.mark.parametrize("path", ["Observation/nope", "Patient/nobody", "Binary/nope", "Foo/1"])
def test_unknown_ids_are_404(sandbox: SmartClient, token: str, path: str) -> None:
    response = sandbox.get(f"{sandbox.fhir}/{path}", token)
    assert response.status_code == 404
    assert response.json()["issue"][0]["code"] == "not-found"


def test_missing_token_is_401_with_challenge(sandbox: SmartClient) -> None:
    response = sandbox.get(f"{sandbox.fhir}/Patient/pat-a", None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["resourceType"] == "OperationOutcome"


def test_bad_token_is_401_and_never_echoed(sandbox: SmartClient, token: str) -> None:
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad in (forged, "garbage-token-value"):
        response = sandbox.get(f"{sandbox.fhir}/Observation", bad, patient="pat-a")
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert bad not in response.text
        assert bad not in str(response.headers)


def test_search_pages_through_all_results(sandbox: SmartClient, token: str) -> None:
    bundles = follow(sandbox, f"{sandbox.fhir}/Observation", token, patient="pat-a")
    assert len(bundles) == 3  # 121 results, 50 per page
    assert all(b["type"] == "searchset" and b["total"] == N_OBSERVATIONS_A + 1 for b in bundles)
    found = ids(bundles)
    assert len(found) == len(set(found)) == N_OBSERVATIONS_A + 1
    assert all(i.startswith("obs-a-") for i in found)
    entry = bundles[0]["entry"][0]
    assert entry["fullUrl"] == f"{sandbox.fhir}/Observation/{entry['resource']['id']}"
    assert entry["search"] == {"mode": "match"}


def test_search_paging_with_count_and_subject(sandbox: SmartClient, token: str) -> None:
    bundles = follow(
        sandbox, f"{sandbox.fhir}/Observation", token, subject="Patient/pat-a", _count="7"
    )
    assert len(bundles) == 18  # ceil(121 / 7)
    assert len(set(ids(bundles))) == N_OBSERVATIONS_A + 1


def test_count_is_clamped_and_zero_gives_total_only(sandbox: SmartClient, token: str) -> None:
    big = sandbox.get(f"{sandbox.fhir}/Observation", token, patient="pat-a", _count="100000").json()
    assert len(big["entry"]) == N_OBSERVATIONS_A + 1
    assert "_count=500" in big["link"][0]["url"]
    zero = sandbox.get(f"{sandbox.fhir}/Observation", token, patient="pat-a", _count="0").json()
    assert zero["total"] == N_OBSERVATIONS_A + 1
    assert "entry" not in zero


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"code": "http://loinc.org|4548-4"}, N_OBSERVATIONS_A // 2),
        ({"code": "2345-7"}, N_OBSERVATIONS_A // 2),
        ({"code": "http://loinc.org|4548-4,2345-7"}, N_OBSERVATIONS_A),
        ({"category": "vital-signs"}, 1),
        ({"date": "ge2023-01-01"}, 1 + sum(1 for i in range(N_OBSERVATIONS_A) if i * 10 >= 1096)),
        ({"_lastUpdated": "lt2020-02-01"}, 4),
        ({"_id": "obs-a-000,obs-a-001,obs-b-0"}, 2),
    ],
)
def test_search_parameters(
    sandbox: SmartClient, token: str, params: dict[str, str], expected: int
) -> None:
    response = sandbox.get(
        f"{sandbox.fhir}/Observation", token, patient="pat-a", _count="500", **params
    )
    assert response.status_code == 200
    assert response.json()["total"] == expected


def test_medication_request_code_search_follows_medication_reference(
    sandbox: SmartClient, token: str
) -> None:
    bundle = sandbox.get(
        f"{sandbox.fhir}/MedicationRequest", token, patient="pat-a", code="860975"
    ).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["mr-a1"]
    medication = sandbox.get(f"{sandbox.fhir}/Medication/med-metformin", token)
    assert medication.status_code == 200


@pytest.mark.parametrize(
    "params",
    [{}, {"patient": "pat-b"}, {"subject": "Patient/pat-b"}],
    ids=["no-patient", "other-patient", "other-subject"],
)
def test_search_outside_patient_context_is_forbidden(
    sandbox: SmartClient, token: str, params: dict[str, str]
) -> None:
    response = sandbox.get(f"{sandbox.fhir}/Observation", token, **params)
    assert response.status_code == 403
    assert response.json()["resourceType"] == "OperationOutcome"


def test_patient_search_by_id(sandbox: SmartClient, token: str) -> None:
    own = sandbox.get(f"{sandbox.fhir}/Patient", token, _id="pat-a").json()
    assert [e["resource"]["id"] for e in own["entry"]] == ["pat-a"]
    assert sandbox.get(f"{sandbox.fhir}/Patient", token, _id="pat-b").status_code == 403


def test_binary_is_readable_through_own_document_reference(
    sandbox: SmartClient, token: str
) -> None:
    own = sandbox.get(f"{sandbox.fhir}/Binary/bin-a1", token)
    assert own.status_code == 200
    assert own.json()["resourceType"] == "Binary"
    assert own.json()["contentType"] == "text/plain"
    assert sandbox.get(f"{sandbox.fhir}/Binary/bin-b1", token).status_code == 403
    assert sandbox.get(f"{sandbox.fhir}/Binary/bin-orphan", token).status_code == 403


def test_type_outside_granted_scopes_is_forbidden(sandbox: SmartClient) -> None:
    narrow = sandbox.ehr_token("launch patient/Observation.rs", patient="pat-a")["access_token"]
    assert sandbox.get(f"{sandbox.fhir}/Observation/obs-a-000", narrow).status_code == 200
    assert sandbox.get(f"{sandbox.fhir}/Condition/cond-a1", narrow).status_code == 403
    assert sandbox.get(f"{sandbox.fhir}/Condition", narrow, patient="pat-a").status_code == 403
    assert sandbox.get(f"{sandbox.fhir}/Binary/bin-a1", narrow).status_code == 403
    assert sandbox.get(f"{sandbox.fhir}/Medication/med-metformin", narrow).status_code == 403


def test_v1_read_scope_allows_read_and_search(sandbox: SmartClient) -> None:
    v1 = sandbox.ehr_token("launch patient/Condition.read", patient="pat-a")["access_token"]
    assert sandbox.get(f"{sandbox.fhir}/Condition/cond-a1", v1).status_code == 200
    assert sandbox.get(f"{sandbox.fhir}/Condition", v1, patient="pat-a").json()["total"] == 1
    assert sandbox.get(f"{sandbox.fhir}/Observation", v1, patient="pat-a").status_code == 403


def test_everything_pages_over_the_compartment(sandbox: SmartClient, token: str) -> None:
    bundles = follow(sandbox, f"{sandbox.fhir}/Patient/pat-a/$everything", token, _count="40")
    found = [
        (e["resource"]["resourceType"], e["resource"]["id"]) for b in bundles for e in b["entry"]
    ]
    # Patient + Encounter + Condition + 2 MedicationRequests + 2 DocumentReferences
    # + 121 Observations + the referenced Medication
    assert len(found) == len(set(found)) == 1 + 1 + 1 + 2 + 2 + (N_OBSERVATIONS_A + 1) + 1
    assert found[0] == ("Patient", "pat-a")
    assert ("Medication", "med-metformin") in found
    assert ("Medication", "med-other") not in found
    for resource in (e["resource"] for b in bundles for e in b["entry"]):
        if resource["resourceType"] not in ("Patient", "Medication"):
            assert resource["subject"] == {"reference": "Patient/pat-a"}
    assert bundles[0]["total"] == len(found)


def test_everything_only_returns_readable_types(sandbox: SmartClient) -> None:
    narrow = sandbox.ehr_token("launch patient/Condition.rs patient/Encounter.rs", patient="pat-a")
    bundle = sandbox.get(f"{sandbox.fhir}/Patient/pat-a/$everything", narrow["access_token"]).json()
    assert sorted(e["resource"]["resourceType"] for e in bundle["entry"]) == [
        "Condition",
        "Encounter",
    ]


def test_everything_for_another_patient_is_forbidden(sandbox: SmartClient, token: str) -> None:
    assert sandbox.get(f"{sandbox.fhir}/Patient/pat-b/$everything", token).status_code == 403


def test_everything_type_and_since_filters(sandbox: SmartClient, token: str) -> None:
    bundle = sandbox.get(
        f"{sandbox.fhir}/Patient/pat-a/$everything",
        token,
        _type="Observation",
        _since="2023-01-01T00:00:00Z",
        _count="500",
    ).json()
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert types == {"Observation"}
    assert all(e["resource"]["meta"]["lastUpdated"] >= "2023-01-01" for e in bundle["entry"])
    assert bundle["total"] == 1 + sum(1 for i in range(N_OBSERVATIONS_A) if i * 10 >= 1096)
