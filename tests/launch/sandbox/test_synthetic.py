"""Tests of the deterministic synthetic patient generator (launch/sandbox/synthetic.py)."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections import Counter, defaultdict
from typing import Any

import pytest

from fhir_adapters.notes import note_text as read_note
from launch.sandbox.synthetic import (
    codes_unique_to_one_patient,
    generate_patients,
    plan_patients,
)
from tests.launch.sandbox.sandbox_support import drug_concept

Resource = dict[str, Any]

TODAY = dt.date(2025, 6, 1)
SHARED_TYPES = {"Practitioner", "Organization", "Medication"}
LOINC_A1C = ("4548-4", "17856-6")
SNOMED_T2DM = "44054006"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
METFORMIN = "860975"


@pytest.fixture(scope="module")
def resources() -> list[Resource]:
    return generate_patients(n_patients=20, seed=7, today=TODAY)


@pytest.fixture(scope="module")
def by_key(resources: list[Resource]) -> dict[str, Resource]:
    return {f"{r['resourceType']}/{r['id']}": r for r in resources}


def owner(res: Resource) -> str | None:
    """The patient reference of a patient-compartment resource (Binary: its securityContext)."""
    for field in ("subject", "patient", "securityContext"):
        if field in res:
            return res[field]["reference"]
    return f"Patient/{res['id']}" if res["resourceType"] == "Patient" else None


def charts(resources: list[Resource]) -> dict[str, list[Resource]]:
    out: dict[str, list[Resource]] = defaultdict(list)
    for res in resources:
        patient = owner(res)
        if patient:
            out[patient].append(res)
    return out


def drug_code(res: Resource, by_key: dict[str, Resource]) -> str:
    concept = drug_concept(res, by_key)
    coding = concept["coding"][0]
    assert coding["system"] == RXNORM
    return coding["code"]


def note_text(doc: Resource, by_key: dict[str, Resource]) -> str:
    """The note as chartcite reads it (plain, Markdown, HTML, Latin-1 or PDF; inline or Binary)."""
    binaries = {r["id"]: r for k, r in by_key.items() if k.startswith("Binary/")}
    text = read_note(doc, binaries).text
    assert text is not None
    return text


def a1c_series(chart: list[Resource]) -> list[tuple[str, float]]:
    return sorted(
        (r["effectiveDateTime"], r["valueQuantity"]["value"])
        for r in chart
        if r["resourceType"] == "Observation" and loinc(r) in LOINC_A1C
    )


def loinc(obs: Resource) -> str:
    return next(c["code"] for c in obs["code"]["coding"] if c["system"] == "http://loinc.org")


def test_same_arguments_give_identical_resources(resources: list[Resource]) -> None:
    again = generate_patients(n_patients=20, seed=7, today=TODAY)
    assert json.dumps(again, sort_keys=True) == json.dumps(resources, sort_keys=True)


def test_another_seed_gives_other_patients(resources: list[Resource]) -> None:
    other = generate_patients(n_patients=20, seed=8, today=TODAY)
    names = {json.dumps(r["name"]) for r in resources if r["resourceType"] == "Patient"}
    other_names = {json.dumps(r["name"]) for r in other if r["resourceType"] == "Patient"}
    assert names != other_names
    assert json.dumps(other, sort_keys=True) != json.dumps(resources, sort_keys=True)


def test_patients_do_not_depend_on_how_many_are_generated(resources: list[Resource]) -> None:
    few = generate_patients(n_patients=3, seed=7, today=TODAY)
    keys = {f"{r['resourceType']}/{r['id']}" for r in resources}
    assert all(f"{r['resourceType']}/{r['id']}" in keys for r in few)
    first = [r for r in resources if owner(r) == "Patient/pat-0001"]
    assert [r for r in few if owner(r) == "Patient/pat-0001"] == first


def test_output_is_plain_json(resources: list[Resource]) -> None:
    assert json.loads(json.dumps(resources)) == resources


def test_every_resource_validates_with_r4b_models(resources: list[Resource]) -> None:
    for res in resources:
        rtype = res["resourceType"]
        model = getattr(importlib.import_module(f"fhir.resources.R4B.{rtype.lower()}"), rtype)
        model.model_validate(res)


def test_ids_are_unique_and_meta_is_set(resources: list[Resource]) -> None:
    keys = Counter(f"{r['resourceType']}/{r['id']}" for r in resources)
    assert max(keys.values()) == 1
    for res in resources:
        assert res["meta"]["versionId"] == "1"
        assert dt.datetime.fromisoformat(res["meta"]["lastUpdated"]).tzinfo is not None


def test_every_reference_points_at_a_generated_resource(
    resources: list[Resource], by_key: dict[str, Resource]
) -> None:
    def references(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["reference"]] if isinstance(node.get("reference"), str) else []
            found += [node["url"]] if str(node.get("url", "")).startswith("Binary/") else []
            return found + [ref for value in node.values() for ref in references(value)]
        if isinstance(node, list):
            return [ref for item in node for ref in references(item)]
        return []

    def local(ref: str, res: Resource) -> bool:
        return ref.startswith("#") and any(c["id"] == ref[1:] for c in res.get("contained", []))

    missing = {
        ref
        for res in resources
        for ref in references(res)
        if ref not in by_key and not local(ref, res)
    }
    assert not missing


def test_every_compartment_resource_belongs_to_an_existing_patient(
    resources: list[Resource], by_key: dict[str, Resource]
) -> None:
    patients = {f"Patient/{r['id']}" for r in resources if r["resourceType"] == "Patient"}
    assert len(patients) == 20
    for res in resources:
        if res["resourceType"] in SHARED_TYPES:
            continue
        assert owner(res) in patients, res["id"]
        if "encounter" in res:  # an encounter of the same patient
            assert owner(by_key[res["encounter"]["reference"]]) == owner(res)


def test_patient_demographics(resources: list[Resource]) -> None:
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    assert len({p["name"][0]["text"] for p in patients}) == 20
    assert len({p["identifier"][0]["value"] for p in patients}) == 20
    for patient in patients:
        mrn = patient["identifier"][0]
        assert mrn["type"]["coding"][0]["code"] == "MR"
        assert mrn["system"].startswith("urn:oid:")
        assert {"line", "city", "state", "postalCode"} <= set(patient["address"][0])
        assert patient["telecom"][0]["system"] == "phone"
        assert patient["gender"] in ("female", "male")


def test_dates_follow_today_and_never_pass_it(resources: list[Resource]) -> None:
    latest_visit = max(
        r["period"]["start"][:10] for r in resources if r["resourceType"] == "Encounter"
    )
    assert (TODAY - dt.date.fromisoformat(latest_visit)).days <= 45
    for res in resources:
        for field in (
            "effectiveDateTime",
            "authoredOn",
            "occurrenceDateTime",
            "performedDateTime",
            "recordedDate",
            "date",
            "issued",
        ):
            if field in res:
                assert res[field][:10] <= TODAY.isoformat(), (res["id"], field)
        assert res["meta"]["lastUpdated"][:10] <= TODAY.isoformat()


def test_default_today_is_the_real_today() -> None:
    resources = generate_patients(n_patients=1)
    a1c = [d for d, _ in a1c_series(resources)]
    assert a1c and (dt.date.today() - dt.date.fromisoformat(a1c[-1][:10])).days <= 45


def test_chart_sizes_are_realistic(resources: list[Resource]) -> None:
    sizes = [len(chart) for chart in charts(resources).values()]
    assert min(sizes) >= 120 and max(sizes) <= 600
    types = Counter(r["resourceType"] for r in resources)
    for rtype in (
        "Encounter",
        "Observation",
        "Condition",
        "MedicationRequest",
        "Medication",
        "AllergyIntolerance",
        "Immunization",
        "Procedure",
        "DocumentReference",
        "Binary",
        "Practitioner",
        "Organization",
    ):
        assert types[rtype] > 0, rtype


def test_hba1c_trends_over_the_last_18_months_match_the_plan(resources: list[Resource]) -> None:
    by_patient = charts(resources)
    since = (TODAY - dt.timedelta(days=548)).isoformat()
    trends = Counter()
    for plan in plan_patients(20, 7, TODAY):
        values = [v for when, v in a1c_series(by_patient[f"Patient/{plan.id}"]) if when >= since]
        if not plan.diabetic:
            assert all(v < 6.5 for v in values), plan.id
            continue
        trends[plan.a1c_trend] += 1
        assert len(values) >= 4, plan.id
        if plan.a1c_trend == "improving":
            assert values[-1] <= values[0] - 1.0, values
        elif plan.a1c_trend == "worsening":
            assert values[-1] >= values[0] + 1.0, values
        else:
            assert max(values) - min(values) <= 0.6, values
    assert min(trends.values()) >= 2 and len(trends) == 3


def test_observations_carry_loinc_ucum_category_and_encounter(resources: list[Resource]) -> None:
    bp_orders: set[tuple[str, ...]] = set()
    wanted = {
        "4548-4",
        "85354-9",
        "39156-5",
        "29463-7",
        "2093-3",
        "18262-6",
        "2085-9",
        "2571-8",
        "62238-1",
        "2160-0",
    }
    seen = set()
    for obs in (r for r in resources if r["resourceType"] == "Observation"):
        seen.add(loinc(obs))
        category = obs["category"][0]["coding"][0]
        assert category["system"] == "http://terminology.hl7.org/CodeSystem/observation-category"
        assert category["code"] in ("laboratory", "vital-signs", "survey")
        assert obs["encounter"]["reference"].startswith("Encounter/")
        quantities = (
            [obs["valueQuantity"]]
            if "valueQuantity" in obs
            else [c["valueQuantity"] for c in obs["component"]]
        )
        for quantity in quantities:
            assert quantity["system"] == "http://unitsofmeasure.org"
        if loinc(obs) in ("85354-9", "55284-4"):
            order = [c["code"]["coding"][0]["code"] for c in obs["component"]]
            assert sorted(order) == ["8462-4", "8480-6"]
            bp_orders.add(tuple(order))
    assert wanted <= seen
    # Both component orders occur, as on real EHRs.
    assert bp_orders == {("8480-6", "8462-4"), ("8462-4", "8480-6")}


def test_medication_requests_start_stop_and_change_dose(
    resources: list[Resource], by_key: dict[str, Resource]
) -> None:
    orders = [r for r in resources if r["resourceType"] == "MedicationRequest"]
    assert {o["status"] for o in orders} == {"active", "stopped", "completed"}
    dose_changes, pairs = 0, set()
    for order in orders:
        assert order["requester"]["reference"].startswith("Practitioner/")
        assert order["dosageInstruction"][0]["text"]
        assert order["dosageInstruction"][0]["timing"]["repeat"]
        if "priorPrescription" in order:
            prior = by_key[order["priorPrescription"]["reference"]]
            assert prior["subject"] == order["subject"]
            assert prior["authoredOn"] < order["authoredOn"]
            if prior["status"] == "stopped":  # a dose change or a switch, not a renewal
                assert prior["statusReason"]["text"]
                before, after = drug_code(prior, by_key), drug_code(order, by_key)
                dose_changes += before != after
                pairs.add((before, after))
    assert dose_changes >= 10
    # same drug, new strength: lisinopril 10 -> 20 mg, atorvastatin 20 -> 40 mg
    assert {("314076", "314077"), ("617310", "617311")} <= pairs
    for chart in charts(resources).values():
        statuses = {r["status"] for r in chart if r["resourceType"] == "MedicationRequest"}
        assert "active" in statuses and statuses & {"stopped", "completed"}


def test_some_orders_point_at_medication_resources(
    resources: list[Resource], by_key: dict[str, Resource]
) -> None:
    orders = [r for r in resources if r["resourceType"] == "MedicationRequest"]
    referenced = [o for o in orders if "medicationReference" in o and "contained" not in o]
    assert 0.12 <= len(referenced) / len(orders) <= 0.3
    for order in referenced:
        assert "medicationCodeableConcept" not in order
        assert by_key[order["medicationReference"]["reference"]]["resourceType"] == "Medication"


def test_notes_are_multi_section_text_inline_or_in_binary(
    resources: list[Resource], by_key: dict[str, Resource]
) -> None:
    names = {
        f"Patient/{r['id']}": r["name"][0]["text"]
        for r in resources
        if r["resourceType"] == "Patient"
    }
    docs = [r for r in resources if r["resourceType"] == "DocumentReference"]
    binary_backed = [d for d in docs if "url" in d["content"][0]["attachment"]]
    assert 0.25 <= len(binary_backed) / len(docs) <= 0.55
    kinds = {d["content"][0]["attachment"]["contentType"].split(";")[0] for d in docs}
    assert kinds == {"text/plain", "text/markdown", "text/html", "application/pdf"}
    for doc in docs:
        assert doc["status"] == "current"
        assert doc["type"]["coding"][0]["code"] in ("11506-3", "34117-2")
        assert doc["context"]["encounter"][0]["reference"].startswith("Encounter/")
        assert doc["author"][0]["reference"].startswith("Practitioner/")
        text = note_text(doc, by_key)
        assert names[doc["subject"]["reference"]] in text
        for heading in ("Chief complaint", "History of present illness", "Assessment", "Plan"):
            assert heading in text
    for doc in binary_backed:
        binary = by_key[doc["content"][0]["attachment"]["url"]]
        assert binary["contentType"] == doc["content"][0]["attachment"]["contentType"]
        assert binary["securityContext"] == doc["subject"]
    assert {d["subject"]["reference"] for d in binary_backed} == set(names)


def test_notes_cite_the_chart(resources: list[Resource], by_key: dict[str, Resource]) -> None:
    by_patient = charts(resources)
    for plan in plan_patients(20, 7, TODAY):
        if not plan.diabetic:
            continue
        chart = by_patient[f"Patient/{plan.id}"]
        when, value = a1c_series(chart)[-1]
        encounter = next(
            r["encounter"]["reference"] for r in chart if r.get("effectiveDateTime") == when
        )
        doc = next(
            r
            for r in chart
            if r["resourceType"] == "DocumentReference"
            and r["context"]["encounter"][0]["reference"] == encounter
        )
        text = note_text(doc, by_key)
        assert f"Hemoglobin A1c {value} %" in text
        assert "metformin ER 500 mg" in text or "metformin ER 1000 mg" in text
        assert "Return in 3 months." in text and "Repeat hemoglobin A1c" in text


def test_many_patients_share_diabetes_and_metformin(
    resources: list[Resource], by_key: dict[str, Resource]
) -> None:
    diabetic, on_metformin = set(), set()
    for res in resources:
        if res["resourceType"] == "Condition" and res["code"]["coding"][0]["code"] == SNOMED_T2DM:
            diabetic.add(res["subject"]["reference"])
        if res["resourceType"] == "MedicationRequest" and drug_code(res, by_key) == METFORMIN:
            on_metformin.add(res["subject"]["reference"])
    assert len(diabetic) >= 6
    assert diabetic <= on_metformin


def test_every_patient_has_something_no_one_else_has(resources: list[Resource]) -> None:
    unique = codes_unique_to_one_patient(resources)
    for plan in plan_patients(20, 7, TODAY):
        key = f"Condition|http://snomed.info/sct|{plan.distinctive.condition.code}"
        assert key in unique[plan.id]
    distinctive_drugs = [
        k for keys in unique.values() for k in keys if k.startswith("MedicationRequest|")
    ]
    assert len(distinctive_drugs) >= 6


def test_conditions_allergies_immunizations_procedures_use_standard_codes(
    resources: list[Resource],
) -> None:
    systems = {
        "Condition": {"http://snomed.info/sct"},
        "Procedure": {"http://snomed.info/sct"},
        "Immunization": {"http://hl7.org/fhir/sid/cvx"},
        "AllergyIntolerance": {"http://snomed.info/sct", RXNORM},
    }
    for res in resources:
        if res["resourceType"] in systems:
            concept = res.get("code") or res["vaccineCode"]
            assert concept["coding"][0]["system"] in systems[res["resourceType"]]
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    assert {c["clinicalStatus"]["coding"][0]["code"] for c in conditions} == {
        "active",
        "resolved",
        "inactive",
        "remission",
    }
    assert all(c["verificationStatus"]["coding"][0]["code"] == "confirmed" for c in conditions)
    allergies = [r for r in resources if r["resourceType"] == "AllergyIntolerance"]
    assert all(a["reaction"][0]["manifestation"] and a["criticality"] for a in allergies)
