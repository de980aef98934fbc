"""Deterministic synthetic patient charts for the sandbox EHR, as FHIR R4 resource dicts.

`generate_patients(n, seed, today)` returns shared Practitioner, Organization and Medication
resources, then for each patient a Patient with two to three years of ambulatory care:
Encounter, Observation (labs, vital signs, surveys), Condition, MedicationRequest (started,
renewed, dose-changed, switched, stopped), AllergyIntolerance, Immunization, Procedure, and
clinical notes as DocumentReference whose text is inline base64 or a separate Binary.
Every date is relative to `today`; the same arguments always give the same resources.

FHIR R4: https://hl7.org/fhir/R4/patient.html, encounter.html, observation.html,
condition.html, medicationrequest.html, medication.html, allergyintolerance.html,
immunization.html, procedure.html, documentreference.html, binary.html

The chart of each patient is built by `synthetic_chart._ChartBuilder`, which stacks
`synthetic_schedule` (visits and trajectories), `synthetic_medications` and `synthetic_notes`;
`synthetic_fhir` holds the small datatype helpers and `synthetic_catalog` the code tables.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any, Literal

from launch.sandbox import synthetic_catalog as cat
from launch.sandbox.synthetic_chart import _ChartBuilder
from launch.sandbox.synthetic_fhir import _TZ, Resource, clinician_name, instant, meta

Trend = Literal["improving", "worsening", "stable"]
TRENDS: tuple[Trend, ...] = ("improving", "worsening", "stable")

__all__ = [
    "PatientPlan",
    "codes_unique_to_one_patient",
    "generate_patients",
    "plan_patients",
]


@dataclass(frozen=True)
class PatientPlan:
    """Who a synthetic patient is and what their chart is meant to show."""

    index: int  # 1-based
    id: str
    given: str
    family: str
    gender: str
    birth_date: dt.date
    mrn: str
    phone: str
    address: tuple[str, str, str, str]  # line, city, state, postal code
    pcp: str  # Practitioner id
    problems: tuple[str, ...]  # keys of synthetic_catalog.PROBLEMS (chronic)
    a1c_trend: Trend | None  # None: not diabetic
    distinctive: (
        cat.Distinctive
    )  # only this patient has it (for n_patients <= len(cat.DISTINCTIVE))

    @property
    def name(self) -> str:
        return f"{self.given} {self.family}"

    @property
    def diabetic(self) -> bool:
        return self.a1c_trend is not None


def plan_patients(
    n_patients: int = 20, seed: int = 7, today: dt.date | None = None
) -> list[PatientPlan]:
    """The patients `generate_patients` makes with the same arguments, without their charts."""
    today = today or dt.date.today()
    rng = random.Random(f"chartcite-plan-{seed}")
    families, female_names, male_names = (
        list(cat.FAMILY),
        list(cat.GIVEN_FEMALE),
        list(cat.GIVEN_MALE),
    )
    for names_list in (families, female_names, male_names):
        rng.shuffle(names_list)
    plans: list[PatientPlan] = []
    names: set[tuple[str, str]] = set()
    n_diabetic = 0
    for k in range(n_patients):
        distinctive = cat.DISTINCTIVE[k % len(cat.DISTINCTIVE)]
        gender = distinctive.gender or rng.choice(("female", "male"))
        diabetic = k % 5 in (0, 1, 2)
        trend: Trend | None = TRENDS[n_diabetic % 3] if diabetic else None
        d_idx = n_diabetic
        n_diabetic += diabetic
        low_age = max(distinctive.min_age, 45 if diabetic else 32)
        age = rng.randint(low_age, min(low_age + 24, 88))
        birth = dt.date(today.year - age, rng.randint(1, 12), rng.randint(1, 28))
        given_pool = female_names if gender == "female" else male_names
        n_same = sum(p.gender == gender for p in plans)
        family = families[k % len(families)]
        given = given_pool[n_same % len(given_pool)]
        while (given, family) in names:  # only once the name lists wrap around
            given, family = rng.choice(given_pool), rng.choice(families)
        names.add((given, family))
        town = rng.choice(cat.TOWNS)
        problems: list[str] = []
        if diabetic:
            problems.append("t2dm")
        elif k % 5 == 3:
            problems.append("prediabetes")
        if (diabetic and d_idx % 4 != 3) or (not diabetic and k % 2 == 0):
            problems.append("htn")
        if (diabetic and d_idx % 3 != 2) or k % 3 == 0:
            problems.append("hld")
        if diabetic and d_idx % 4 == 1:
            problems.append("ckd3")
        if k % 6 == 4:
            problems.append("asthma")
        if k % 4 == 3:
            problems.append("depression")
        if age >= 55 and k % 3 == 1:
            problems.append("oa_knee")
        area = ("413", "860", "508", "774")[(k // 100) % 4]
        plans.append(
            PatientPlan(
                index=k + 1,
                id=f"pat-{k + 1:04d}",
                given=given,
                family=family,
                gender=gender,
                birth_date=birth,
                mrn=str(7_000_000 + k * 7919 + rng.randint(0, 999)),
                phone=f"({area}) 555-01{k % 100:02d}",
                address=(f"{rng.randint(12, 980)} {rng.choice(cat.STREETS)}", *town),
                pcp=cat.PCP_IDS[k % len(cat.PCP_IDS)],
                problems=tuple(problems),
                a1c_trend=trend,
                distinctive=distinctive,
            )
        )
    return plans


def generate_patients(
    n_patients: int = 20,
    seed: int = 7,
    today: dt.date | None = None,
    *,
    history_scale: float = 1.0,
) -> list[Resource]:
    """FHIR R4 resources for `n_patients` synthetic patients plus shared clinicians and clinics.

    ``history_scale`` stretches each chart's 2.3-3 years of history (3.5: about 1,000 resources).
    """
    today = today or dt.date.today()
    created = dt.datetime.combine(today - dt.timedelta(days=1200), dt.time(9, 0), tzinfo=_TZ)
    shared: list[Resource] = [_practitioner(c, created) for c in cat.CLINICIANS]
    shared += [_organization(o, created) for o in (cat.CLINIC, cat.SPECIALTY_CLINIC)]
    medications: dict[str, Resource] = {}
    charts: list[Resource] = []
    for plan in plan_patients(n_patients, seed, today):
        builder = _ChartBuilder(
            plan, random.Random(f"chartcite-{seed}-{plan.index}"), today, history_scale
        )
        charts.append(_patient(plan, builder.first_moment))
        charts += builder.build()
        for rxcui, display in builder.referenced_medications:
            medications.setdefault(rxcui, _medication(rxcui, display, created))
    return shared + [medications[k] for k in sorted(medications)] + charts


def codes_unique_to_one_patient(resources: list[Resource]) -> dict[str, list[str]]:
    """Map patient id → sorted `Type|system|code` keys found in no other patient's chart.

    Looks at Condition, Observation and AllergyIntolerance codes and MedicationRequest drugs
    (resolving `medicationReference` to the contained or stand-alone Medication's code).
    """
    med_codes = {
        f"Medication/{r['id']}": r["code"]["coding"][0]
        for r in resources
        if r["resourceType"] == "Medication"
    }
    owners: dict[str, set[str]] = {}
    for res in resources:
        rtype = res["resourceType"]
        if rtype in ("Condition", "Observation"):
            coding, subject = res["code"]["coding"][0], res["subject"]["reference"]
        elif rtype == "AllergyIntolerance":
            coding, subject = res["code"]["coding"][0], res["patient"]["reference"]
        elif rtype == "MedicationRequest":
            coding, subject = _drug_coding(res, med_codes), res["subject"]["reference"]
        else:
            continue
        key = f"{rtype}|{coding['system']}|{coding['code']}"
        owners.setdefault(key, set()).add(subject.removeprefix("Patient/"))
    unique: dict[str, list[str]] = {}
    for key in sorted(owners):
        if len(owners[key]) == 1:
            unique.setdefault(next(iter(owners[key])), []).append(key)
    return unique


def _drug_coding(order: Resource, med_codes: dict[str, Resource]) -> Resource:
    """The RxNorm coding of an order's drug: inline, contained (`#m1`) or a Medication's."""
    if concept := order.get("medicationCodeableConcept"):
        return concept["coding"][0]  # type: ignore[no-any-return]
    ref = order["medicationReference"]["reference"]
    if ref.startswith("#"):
        contained = next(c for c in order["contained"] if c["id"] == ref[1:])
        return contained["code"]["coding"][0]  # type: ignore[no-any-return]
    return med_codes[ref]


def _patient(plan: PatientPlan, created: dt.datetime) -> Resource:
    pcp = next(c for c in cat.CLINICIANS if c.id == plan.pcp)
    line, city, state, postal = plan.address
    return {
        "resourceType": "Patient",
        "id": plan.id,
        "meta": meta(created),
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {
                            "system": cat.IDENTIFIER_TYPE,
                            "code": "MR",
                            "display": "Medical Record Number",
                        }
                    ],
                    "text": "MRN",
                },
                "system": cat.MRN_SYSTEM,
                "value": plan.mrn,
            }
        ],
        "active": True,
        "name": [
            {"use": "official", "text": plan.name, "family": plan.family, "given": [plan.given]}
        ],
        "telecom": [{"system": "phone", "value": plan.phone, "use": "home"}],
        "gender": plan.gender,
        "birthDate": plan.birth_date.isoformat(),
        "address": [
            {
                "use": "home",
                "line": [line],
                "city": city,
                "state": state,
                "postalCode": postal,
                "country": "US",
            }
        ],
        "generalPractitioner": [
            {"reference": f"Practitioner/{pcp.id}", "display": clinician_name(pcp)}
        ],
        "managingOrganization": {
            "reference": f"Organization/{cat.CLINIC['id']}",
            "display": cat.CLINIC["name"],
        },
    }


def _practitioner(c: cat.Clinician, created: dt.datetime) -> Resource:
    name: dict[str, Any] = {
        "use": "official",
        "family": c.family,
        "given": [c.given],
        "suffix": [c.suffix],
    }
    if c.suffix in ("MD", "DO"):
        name["prefix"] = ["Dr."]
    return {
        "resourceType": "Practitioner",
        "id": c.id,
        "meta": meta(created),
        "identifier": [{"system": cat.NPI, "value": c.npi}],
        "active": True,
        "name": [name],
        "telecom": [{"system": "phone", "value": cat.CLINIC["phone"], "use": "work"}],
        "qualification": [{"code": {"text": f"{c.suffix}, {c.specialty}"}}],
    }


def _organization(org: dict[str, str], created: dt.datetime) -> Resource:
    return {
        "resourceType": "Organization",
        "id": org["id"],
        "meta": meta(created),
        "identifier": [{"system": cat.NPI, "value": org["npi"]}],
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    }
                ]
            }
        ],
        "name": org["name"],
        "telecom": [{"system": "phone", "value": org["phone"], "use": "work"}],
        "address": [
            {
                "line": [org["line"]],
                "city": org["city"],
                "state": org["state"],
                "postalCode": org["postalCode"],
                "country": "US",
            }
        ],
    }


def _medication(rxcui: str, display: str, created: dt.datetime) -> Resource:
    return {
        "resourceType": "Medication",
        "id": f"med-rx{rxcui}",
        "meta": {"versionId": "1", "lastUpdated": instant(created)},
        "code": {
            "coding": [{"system": cat.RXNORM, "code": rxcui, "display": display}],
            "text": display,
        },
        "status": "active",
    }
