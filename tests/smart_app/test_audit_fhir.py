"""Audit records as FHIR R4 AuditEvents: the mapping validates and names what the record names."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent

from smart_app.audit_fhir import ANSWER_SYSTEM, CLIENT_SYSTEM, bundle, to_audit_event, validated


def _row(**over: Any) -> dict[str, Any]:
    row = {
        "seq": 7,
        "recorded_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "action": "ask",
        "outcome": "ok",
        "actor": "Practitioner/9",
        "client_id": "chartcite",
        "source": "ehr-0123456789ab",
        "patient_id": "p1",
        "prev_hash": "0" * 64,
        "hash": "a" * 64,
    }
    return {**row, **over}


DETAIL = {
    "answer_id": "ans-1",
    "cited": ["Observation/o1"],
    "retrieved": ["Observation/o1", "MedicationRequest/m1"],
    "mode": "extractive",
    "latency_ms": 12,
}


def test_an_ask_maps_to_a_valid_audit_event() -> None:
    event = validated(to_audit_event(_row(), DETAIL))
    AuditEvent.model_validate(event)
    assert (event["type"]["code"], event["action"], event["outcome"]) == ("rest", "E", "0")
    assert event["agent"][0] == {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                    "code": "humanuser",
                }
            ]
        },
        "who": {"reference": "Practitioner/9"},
        "requestor": True,
    }
    assert event["agent"][1]["who"]["identifier"] == {"system": CLIENT_SYSTEM, "value": "chartcite"}
    roles = {e["what"].get("reference"): e.get("description") for e in event["entity"]}
    assert roles["Patient/p1"] is None
    assert roles["Observation/o1"] == "cited" and roles["MedicationRequest/m1"] == "retrieved"
    answer = next(e for e in event["entity"] if e.get("description") == "answer")
    assert answer["what"]["identifier"] == {"system": ANSWER_SYSTEM, "value": "ans-1"}
    patient = event["entity"][0]
    assert {"type": "source", "valueString": "ehr-0123456789ab"} in patient["detail"]
    assert event["source"]["observer"] == {"display": "chartcite"}


def test_failures_reads_and_records_without_a_user_or_patient() -> None:
    read = to_audit_event(
        _row(action="resource_read", outcome="scope_denied"), {"resource": "Condition/c"}
    )
    assert (read["action"], read["outcome"], read["outcomeDesc"]) == ("R", "4", "scope_denied")
    assert read["subtype"][1]["code"] == "read"
    launch = validated(
        to_audit_event(
            _row(
                action="launch",
                outcome="iss_not_allowed",
                actor=None,
                client_id=None,
                patient_id=None,
                source=None,
            ),
            {"iss": "https://evil.example"},
        )
    )
    assert launch["type"]["code"] == "110114"
    assert launch["agent"] == [launch["agent"][0]] and launch["agent"][0]["requestor"] is True
    assert launch["entity"][0]["detail"] == [{"type": "iss", "valueString": "https://evil.example"}]
    failed = to_audit_event(_row(action="sync", outcome="failed", actor="chartcite"), {})
    assert failed["outcome"] == "8" and failed["agent"][0]["who"] == {"display": "chartcite"}


def test_a_bundle_of_events_validates() -> None:
    events = [to_audit_event(_row(seq=i), DETAIL) for i in (1, 2)]
    body = validated(bundle(events, bundle_type="searchset", bundle_id="audit-1"))
    assert body["total"] == 2 and body["entry"][0]["search"] == {"mode": "match"}
