"""Validation (fhir.resources R4B) and projection of FHIR R4 resources to facts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fhir_adapters.normalize import InvalidResource, parse_date, project, validate
from fhir_adapters.sync import belongs_to

OBS = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "laboratory",
                }
            ]
        }
    ],
    "code": {
        "coding": [
            {"system": "urn:local", "code": "x"},
            {"system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c"},
        ]
    },
    "subject": {"reference": "Patient/p1"},
    "encounter": {"reference": "Encounter/e1"},
    "effectiveDateTime": "2025-03-01T10:00:00+01:00",
    "valueQuantity": {"value": 7.2, "unit": "%"},
}


def test_observation_projection_prefers_loinc() -> None:
    fact = project(validate(dict(OBS)))
    assert fact is not None
    assert (fact.code_system, fact.code, fact.display) == (
        "http://loinc.org",
        "4548-4",
        "Hemoglobin A1c",
    )
    assert fact.value_num == 7.2 and fact.unit == "%" and fact.category == "laboratory"
    assert fact.date == datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    assert fact.encounter_id == "e1"


def test_blood_pressure_components() -> None:
    bp = {
        "resourceType": "Observation",
        "id": "bp",
        "status": "final",
        "code": {"text": "Blood pressure"},
        "effectiveDateTime": "2025-01-02",
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 142, "unit": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {"value": 88, "unit": "mm[Hg]"},
            },
        ],
    }
    fact = project(validate(bp))
    assert fact is not None and [c["value"] for c in fact.detail["components"]] == [142, 88]


def test_medication_request_via_medication_reference() -> None:
    mr = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "stopped",
        "intent": "order",
        "medicationReference": {"reference": "Medication/med1"},
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2024-05-06",
        "dosageInstruction": [{"text": "500 mg twice daily"}],
    }
    med = {
        "resourceType": "Medication",
        "id": "med1",
        "code": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "860975",
                    "display": "metformin 500 MG",
                }
            ]
        },
    }
    fact = project(validate(mr), medications={"med1": med})
    assert fact is not None
    assert (fact.code, fact.display, fact.status) == ("860975", "metformin 500 MG", "stopped")
    assert fact.detail["dosage"] == "500 mg twice daily"


def test_invalid_resource_reason_has_no_values() -> None:
    bad = dict(OBS, valueQuantity={"value": "John Smith 555-1234"}, secretField="Jane Doe")
    with pytest.raises(InvalidResource) as err:
        validate(bad)
    assert "valueQuantity.value" in err.value.reason and "secretField" in err.value.reason
    assert "John" not in err.value.reason and "Jane" not in err.value.reason
    for junk in ([], {"resourceType": "Observation"}, {"resourceType": "NoSuchThing", "id": "x"}):
        with pytest.raises(InvalidResource):
            validate(junk)


def test_parse_partial_dates() -> None:
    assert parse_date("2024") == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_date("2024-07") == datetime(2024, 7, 1, tzinfo=UTC)
    assert parse_date("2024-07-09") == datetime(2024, 7, 9, tzinfo=UTC)
    assert parse_date("garbage") is None and parse_date(None) is None


def test_compartment_membership() -> None:
    assert belongs_to(OBS, "p1") and not belongs_to(OBS, "p2")
    assert belongs_to({"resourceType": "Patient", "id": "p1"}, "p1")
    assert not belongs_to({"resourceType": "Patient", "id": "p2"}, "p1")
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "a",
        "patient": {"reference": "Patient/p2"},
    }
    assert not belongs_to(allergy, "p1")
