"""The synthetic charts vary what real EHRs vary (codes, drug forms, note formats, absences)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections import defaultdict
from typing import Any

import pytest

from fhir_adapters.normalize import validate
from launch.sandbox.synthetic import generate_patients
from tests.launch.sandbox.sandbox_support import drug_concept

Resource = dict[str, Any]

TODAY = dt.date(2025, 6, 1)
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
FLU_CVX = {"140", "141", "150"}
STATINS = ("atorvastatin", "simvastatin", "rosuvastatin", "lipitor")


@pytest.fixture(scope="module")
def resources() -> list[Resource]:
    return generate_patients(n_patients=20, seed=7, today=TODAY)


@pytest.fixture(scope="module")
def by_patient(resources: list[Resource]) -> dict[str, list[Resource]]:
    out: dict[str, list[Resource]] = defaultdict(list)
    for res in resources:
        for field in ("subject", "patient", "securityContext"):
            if field in res:
                out[res[field]["reference"]].append(res)
                break
    assert len(out) == 20
    return out


def of_type(resources: list[Resource], rtype: str) -> list[Resource]:
    return [r for r in resources if r["resourceType"] == rtype]


def loinc_codes(obs: Resource) -> set[str]:
    return {c["code"] for c in obs["code"]["coding"] if c["system"] == LOINC}


def test_every_resource_validates_as_the_sync_does(resources: list[Resource]) -> None:
    for res in resources:
        validate(res)


def test_blood_pressure_panels_vary_code_and_component_order(resources: list[Resource]) -> None:
    panels = [o for o in of_type(resources, "Observation") if "component" in o]
    codes = {tuple(sorted(loinc_codes(o))) for o in panels}
    assert codes == {("85354-9",), ("55284-4",)}
    orders = {tuple(c["code"]["coding"][0]["code"] for c in o["component"]) for o in panels}
    assert orders == {("8480-6", "8462-4"), ("8462-4", "8480-6")}


def test_orders_name_the_drug_in_three_ways(resources: list[Resource]) -> None:
    orders = of_type(resources, "MedicationRequest")
    medications = {f"Medication/{m['id']}": m for m in of_type(resources, "Medication")}
    inline = [o for o in orders if "medicationCodeableConcept" in o]
    contained = [o for o in orders if "contained" in o]
    standalone = [o for o in orders if "medicationReference" in o and "contained" not in o]
    assert inline and contained and standalone
    for order in inline:
        concept = order["medicationCodeableConcept"]
        assert concept["text"] and concept["coding"][0]["system"] == RXNORM
    for order in contained:
        assert "medicationCodeableConcept" not in order
        assert order["medicationReference"]["reference"] == "#m1"
        (med,) = order["contained"]
        assert med["resourceType"] == "Medication" and med["id"] == "m1"
        assert med["code"]["coding"][0]["system"] == RXNORM
    for order in standalone:
        assert order["medicationReference"]["reference"] in medications


def test_generic_and_brand_products_both_occur(resources: list[Resource]) -> None:
    by_id = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    displays = {
        drug_concept(o, by_id)["coding"][0]["display"]
        for o in of_type(resources, "MedicationRequest")
    }
    assert {"atorvastatin 20 MG Oral Tablet", "Lipitor 20 MG Oral Tablet"} <= displays
    assert "Norvasc 5 MG Oral Tablet" in displays


@pytest.mark.parametrize(
    "variants",
    [
        ("4548-4", "17856-6"),
        ("2345-7", "2339-0"),
        ("18262-6", "13457-7"),
        ("33914-3", "62238-1", "98979-8"),
        ("29463-7", "3141-9"),
        ("8310-5",),
    ],
)
def test_the_same_test_comes_with_different_loinc_codes(
    by_patient: dict[str, list[Resource]], variants: tuple[str, ...]
) -> None:
    owners: dict[str, set[str]] = defaultdict(set)
    for patient, chart in by_patient.items():
        for obs in of_type(chart, "Observation"):
            for code in loinc_codes(obs) & set(variants):
                owners[code].add(patient)
    assert set(owners) == set(variants)
    if len(variants) > 1:  # some patients' labs change code between visits
        assert any(sum(p in owned for owned in owners.values()) > 1 for p in by_patient)


def test_loinc_long_names_and_local_codes(resources: list[Resource]) -> None:
    displays = {
        c["code"]: c["display"]
        for o in of_type(resources, "Observation")
        for c in o["code"]["coding"]
        if c["system"] == LOINC
    }
    assert displays["4548-4"] == "Hemoglobin A1c/Hemoglobin.total in Blood"
    assert displays["13457-7"] == (
        "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation"
    )
    two_codings = [o for o in of_type(resources, "Observation") if len(o["code"]["coding"]) == 2]
    assert two_codings
    for obs in two_codings:
        local, standard = obs["code"]["coding"]
        assert local["system"] != LOINC and standard["system"] == LOINC


def _note_bytes(doc: Resource, binaries: dict[str, Resource]) -> tuple[str, str]:
    attachment = doc["content"][0]["attachment"]
    data = attachment.get("data") or binaries[attachment["url"]]["data"]
    raw = base64.b64decode(data)
    return attachment["contentType"], raw.decode("latin-1")


def test_notes_use_markdown_headings_or_label_lines_including_the_latest(
    resources: list[Resource], by_patient: dict[str, list[Resource]]
) -> None:
    binaries = {f"Binary/{b['id']}": b for b in of_type(resources, "Binary")}

    def shape(doc: Resource) -> str | None:
        content_type, text = _note_bytes(doc, binaries)
        if content_type.startswith("text/markdown"):
            assert "\n## Assessment\n" in text and "\n## Plan\n" in text
            return "markdown"
        if content_type.startswith("text/plain"):
            assert "\nAssessment:\n" in text and "\nPlan:\n" in text
            return "label"
        return None

    latest = {
        patient: shape(max(of_type(chart, "DocumentReference"), key=lambda d: d["date"]))
        for patient, chart in by_patient.items()
    }
    assert sum(s == "markdown" for s in latest.values()) >= 3
    assert sum(s == "label" for s in latest.values()) >= 3


def test_some_charts_lack_things_others_have(by_patient: dict[str, list[Resource]]) -> None:
    def has_a1c(chart: list[Resource]) -> bool:
        return any(loinc_codes(o) & {"4548-4", "17856-6"} for o in of_type(chart, "Observation"))

    def has_statin(chart: list[Resource]) -> bool:
        return any(
            any(s in json.dumps(o).lower() for s in STATINS)
            for o in of_type(chart, "MedicationRequest")
        )

    def has_flu_shot(chart: list[Resource]) -> bool:
        return any(
            i["vaccineCode"]["coding"][0]["code"] in FLU_CVX for i in of_type(chart, "Immunization")
        )

    checks = {
        "HbA1c": has_a1c,
        "statin": has_statin,
        "allergy": lambda c: bool(of_type(c, "AllergyIntolerance")),
        "flu shot": has_flu_shot,
        "procedure": lambda c: bool(of_type(c, "Procedure")),
    }
    for what, check in checks.items():
        found = [check(chart) for chart in by_patient.values()]
        assert any(found) and not all(found), what


def test_problems_resolve_go_inactive_or_remit(by_patient: dict[str, list[Resource]]) -> None:
    statuses: dict[str, set[str]] = defaultdict(set)
    for patient, chart in by_patient.items():
        for cond in of_type(chart, "Condition"):
            status = cond["clinicalStatus"]["coding"][0]["code"]
            statuses[status].add(patient)
            if status == "active":
                assert "abatementDateTime" not in cond
            if status == "resolved":
                assert cond["abatementDateTime"] >= cond["onsetDateTime"]
            if "encounter" not in cond and status != "active":  # a problem-list item
                statuses[f"problem-list {status}"].add(patient)
    assert len(statuses["resolved"]) >= 10
    assert statuses["problem-list resolved"] and statuses["inactive"] and statuses["remission"]


def test_stopped_and_completed_orders_sit_beside_active_ones(
    by_patient: dict[str, list[Resource]],
) -> None:
    mixed = [
        patient
        for patient, chart in by_patient.items()
        if {"active", "stopped", "completed"}
        <= {o["status"] for o in of_type(chart, "MedicationRequest")}
    ]
    assert len(mixed) >= 5
