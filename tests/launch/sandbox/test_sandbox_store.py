"""The sandbox's in-memory store: compartment, references, FHIR search semantics, $everything."""

from __future__ import annotations

import pytest

from launch.sandbox import SandboxStore
from launch.sandbox.errors import BadRequest
from launch.sandbox.search_params import (
    clinical_date,
    date_matches,
    parse_date_range,
    token_matches,
)
from tests.launch.sandbox.sandbox_support import N_OBSERVATIONS_A, build_resources


@pytest.fixture
def store() -> SandboxStore:
    return SandboxStore(build_resources())


def test_get_and_types(store: SandboxStore) -> None:
    assert store.get("Patient", "pat-a")["name"][0]["family"] == "Lovelace"  # type: ignore[index]
    assert store.get("Patient", "nobody") is None
    assert "Observation" in store.types()
    assert [p["id"] for p in store.patients()] == ["pat-a", "pat-b"]


def test_add_keeps_a_copy(store: SandboxStore) -> None:
    resource = {"resourceType": "Organization", "id": "org-2", "name": "Before"}
    store.add(resource)
    resource["name"] = "After"
    assert store.get("Organization", "org-2")["name"] == "Before"  # type: ignore[index]


def test_add_rejects_resources_without_identity(store: SandboxStore) -> None:
    with pytest.raises(ValueError):
        store.add({"resourceType": "Observation"})


def test_compartment_membership(store: SandboxStore) -> None:
    assert store.compartment_owner("Patient", "pat-a") == "pat-a"
    assert store.compartment_owner("Observation", "obs-a-000") == "pat-a"
    assert store.compartment_owner("MedicationRequest", "mr-b1") == "pat-b"
    assert store.compartment_owner("Medication", "med-metformin") is None
    assert store.compartment_owner("Binary", "bin-a1") is None
    assert store.is_compartment_type("Observation")
    assert not store.is_compartment_type("Medication")


def test_compartment_membership_by_patient_and_beneficiary() -> None:
    store = SandboxStore(
        [
            {
                "resourceType": "AllergyIntolerance",
                "id": "al-1",
                "patient": {"reference": "Patient/p1"},
            },
            {"resourceType": "Coverage", "id": "cov-1", "beneficiary": {"reference": "Patient/p2"}},
            {
                "resourceType": "Observation",
                "id": "o-1",
                "subject": {"reference": "http://ehr.example/fhir/Patient/p3"},
            },
            {"resourceType": "Observation", "id": "o-2", "subject": {"reference": "Group/g1"}},
        ]
    )
    assert store.compartment_owner("AllergyIntolerance", "al-1") == "p1"
    assert store.compartment_owner("Coverage", "cov-1") == "p2"
    assert store.compartment_owner("Observation", "o-1") == "p3"
    assert store.compartment_owner("Observation", "o-2") is None


def test_replacing_a_resource_moves_it_between_compartments(store: SandboxStore) -> None:
    moved = dict(store.get("Observation", "obs-b-0") or {})
    moved["subject"] = {"reference": "Patient/pat-a"}
    store.add(moved)
    assert store.compartment_owner("Observation", "obs-b-0") == "pat-a"
    assert "obs-b-0" not in [r["id"] for r in store.search("Observation", "pat-b")]
    assert "obs-b-0" in [r["id"] for r in store.search("Observation", "pat-a")]


def test_referrers_link_binaries_and_medications(store: SandboxStore) -> None:
    assert [r["id"] for r in store.referrers("Binary", "bin-a1")] == ["doc-a1"]
    assert store.referrers("Binary", "bin-orphan") == []
    assert [r["id"] for r in store.referrers("Medication", "med-metformin")] == ["mr-a1"]


def test_search_in_compartment_is_stable(store: SandboxStore) -> None:
    first = [r["id"] for r in store.search("Observation", "pat-a")]
    assert len(first) == N_OBSERVATIONS_A + 1
    assert first == [r["id"] for r in store.search("Observation", "pat-a")]
    assert len(store.search("Observation")) == N_OBSERVATIONS_A + 1 + 5


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("code", "http://loinc.org|4548-4")], N_OBSERVATIONS_A // 2),
        ([("code", "|4548-4")], 0),  # the codings have a system
        ([("code", "http://loinc.org|")], N_OBSERVATIONS_A + 1),
        ([("code", "4548-4"), ("date", "ge2020-01-11"), ("date", "lt2020-02-01")], 1),
        (
            [
                (
                    "category",
                    "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
                )
            ],
            1,
        ),
        ([("category", "laboratory")], N_OBSERVATIONS_A),
        ([("date", "2020-01")], 4),
        ([("date", "eq2020-01-11")], 1),
        ([("date", "ne2020-01-11")], N_OBSERVATIONS_A),
        ([("_lastUpdated", "gt2020-01-11T12:00:00Z")], N_OBSERVATIONS_A + 1 - 2),
        ([("_lastUpdated", "le2020-01-11T12:00:00Z")], 2),
        ([("_id", "obs-a-001,obs-a-002")], 2),
    ],
)
def test_search_parameters(
    store: SandboxStore, params: list[tuple[str, str]], expected: int
) -> None:
    assert len(store.search("Observation", "pat-a", params)) == expected


def test_medication_code_search_uses_concept_and_reference(store: SandboxStore) -> None:
    assert [r["id"] for r in store.search("MedicationRequest", "pat-a", {"code": "860975"})] == [
        "mr-a1"
    ]
    assert [r["id"] for r in store.search("MedicationRequest", "pat-a", {"code": "29046"})] == [
        "mr-a2"
    ]
    by_date = store.search("MedicationRequest", "pat-a", {"date": "ge2022-01-01"})
    assert [r["id"] for r in by_date] == ["mr-a2"]


def test_condition_date_prefers_onset(store: SandboxStore) -> None:
    assert len(store.search("Condition", "pat-a", {"date": "2019-05-01"})) == 1
    assert len(store.search("Condition", "pat-a", {"date": "2019-05-02"})) == 0


def test_unsupported_search_parameter_is_rejected(store: SandboxStore) -> None:
    with pytest.raises(BadRequest):
        store.search("Observation", "pat-a", {"value-quantity": "gt5"})


def test_everything_puts_patient_first_and_adds_referenced_medications(store: SandboxStore) -> None:
    everything = store.everything("pat-a")
    keys = [(r["resourceType"], r["id"]) for r in everything]
    assert keys[0] == ("Patient", "pat-a")
    assert ("Medication", "med-metformin") in keys
    assert ("Medication", "med-other") not in keys
    assert ("Binary", "bin-a1") not in keys
    assert len(keys) == len(set(keys))
    only = store.everything("pat-a", types={"Condition"})
    assert [r["id"] for r in only] == ["cond-a1"]
    recent = store.everything("pat-a", since="2024-01-01T00:00:00Z")
    assert {r["resourceType"] for r in recent} == {"Patient", "Observation"}


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("2024", "2024-01-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
        ("2024-12", "2024-12-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
        ("2024-02-28", "2024-02-28T00:00:00+00:00", "2024-02-29T00:00:00+00:00"),
        ("2024-02-28T10:00:00+02:00", "2024-02-28T08:00:00+00:00", "2024-02-28T08:00:01+00:00"),
        (
            "2024-02-28T10:00:00.5Z",
            "2024-02-28T10:00:00.500000+00:00",
            "2024-02-28T10:00:00.500001+00:00",
        ),
    ],
)
def test_date_precision_ranges(value: str, start: str, end: str) -> None:
    parsed = parse_date_range(value)
    assert (parsed.start.isoformat(), parsed.end.isoformat()) == (start, end)


def test_date_prefixes() -> None:
    assert date_matches("2024-03-01", "ge2024-03-01")
    assert not date_matches("2024-02-29", "ge2024-03-01")
    assert date_matches("2024-03-01T23:59:59Z", "le2024-03-01")
    assert not date_matches("2024-03-02", "le2024-03-01")
    assert date_matches("2024-03-02", "gt2024-03-01")
    assert not date_matches("2024-03-01T12:00:00Z", "gt2024-03-01")
    assert date_matches("2024-02-29", "lt2024-03-01")
    assert date_matches("2024-03-02", "sa2024-03-01")
    assert date_matches("2024-02-28", "eb2024-03-01")
    assert not date_matches(None, "ge2000")
    with pytest.raises(BadRequest):
        date_matches("2024-01-01", "ge-not-a-date")


def test_token_forms() -> None:
    concept = {"coding": [{"system": "http://loinc.org", "code": "4548-4"}, {"code": "local-1"}]}
    assert token_matches(concept, "4548-4")
    assert token_matches(concept, "http://loinc.org|4548-4")
    assert token_matches(concept, "http://loinc.org|")
    assert token_matches(concept, "|local-1")
    assert not token_matches(concept, "|4548-4")
    assert not token_matches(concept, "http://snomed.info/sct|4548-4")
    assert token_matches([{"coding": [{"code": "a"}]}, concept], "local-1")


def test_clinical_date_order() -> None:
    assert clinical_date({"effectivePeriod": {"start": "2020-01-01"}}) == "2020-01-01"
    assert clinical_date({"onsetDateTime": "2019", "recordedDate": "2020"}) == "2019"
    assert clinical_date({"period": {"start": "2021"}, "date": "2022"}) == "2021"
    assert clinical_date({"status": "final"}) is None
