"""Table-driven scope cases: what a granted scope string lets a session read, and what it never does.

Each row: the granted ``scope`` string, then the chart types the access filter must allow (exactly).
Malformed scopes grant nothing; nothing is ever widened beyond what a well-formed scope says.
"""

from __future__ import annotations

import pytest

from smart_app.scopes import GrantedScopes, parse_scope
from smart_app.session import CHART_TYPES, access_for

ALL = frozenset(CHART_TYPES)
OBS = frozenset({"Observation"})
MEDS = frozenset(
    {"MedicationRequest", "Medication"}
)  # a readable MedicationRequest brings its drug
NONE: frozenset[str] = frozenset()

CASES: list[tuple[str, frozenset[str]]] = [
    # v1 grammar
    ("patient/*.read", ALL),
    ("patient/Observation.read", OBS),
    ("user/Observation.read", OBS),
    ("patient/*.*", ALL),
    ("patient/Observation.*", OBS),
    ("patient/Observation.write", NONE),
    ("user/*.write", NONE),
    # v2 grammar
    ("patient/*.rs", ALL),
    ("patient/*.cruds", ALL),
    ("patient/*.crs", ALL),
    ("patient/Observation.rs", OBS),
    ("user/Observation.rs", OBS),
    ("patient/Observation.r", NONE),  # read without search cannot pull a chart
    ("patient/Observation.s", NONE),
    ("patient/Observation.cud", NONE),
    ("patient/Observation.rd", NONE),
    ("patient/MedicationRequest.rs", MEDS),
    ("patient/Medication.rs", frozenset({"Medication"})),
    ("patient/Observation.rs patient/Condition.rs", OBS | {"Condition"}),
    ("patient/Observation.rs patient/Observation.read", OBS),
    ("launch openid fhirUser patient/Observation.rs", OBS),
    ("openid fhirUser", NONE),
    ("launch/patient offline_access", NONE),
    ("", NONE),
    # system scopes are for backend services, never a patient session's chart
    ("system/*.rs", NONE),
    ("system/Observation.read", NONE),
    # granular v2 scopes with a category query: the type, restricted (see CATEGORY_CASES); any
    # other query: no read of the type (never widened to the whole type)
    ("patient/Observation.rs?category=laboratory", OBS),
    (
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        OBS,
    ),
    ("patient/Observation.rs?category=laboratory patient/Condition.rs", OBS | {"Condition"}),
    ("patient/Observation.rs?", NONE),
    ("patient/Observation.rs?code=http://loinc.org|4548-4", NONE),
    ("patient/Immunization.rs?category=x", NONE),  # Immunization has no category element
    ("patient/Patient.rs?category=x", NONE),
    # a restricted MedicationRequest read does not bring every drug along
    ("patient/MedicationRequest.rs?category=outpatient", frozenset({"MedicationRequest"})),
    # malformed: nothing at all
    ("patient/Observation.sr", NONE),  # v2 letters out of canonical order
    ("patient/Observation.rrs", NONE),  # repeated letter
    ("patient/Observation.rsx", NONE),
    ("patient/Observation.", NONE),
    ("patient/Observation", NONE),
    ("patient/observation.rs", NONE),  # resource types are upper camel case
    ("Patient/Observation.rs", NONE),  # contexts are lower case
    ("patient//Observation.rs", NONE),
    ("patients/Observation.rs", NONE),
    ("encounter/Observation.rs", NONE),
    ("patient/Observation.READ", NONE),
    ("patient/*.", NONE),
    ("patient/**.rs", NONE),
    ("patient/Observation.rs.rs", NONE),
    ("patient/Obs-ervation.rs", NONE),
    ("patient/Observation .rs", NONE),
    ("patient/UnknownThing.rs", NONE),  # well-formed, but not a type chartcite stores
    # a malformed token next to a good one does not spoil (or widen) the good one
    ("patient/Observation.sr patient/Condition.rs", frozenset({"Condition"})),
    ("patient/Obs*.rs patient/Observation.rs", OBS),
]


@pytest.mark.parametrize(("scope", "allowed"), CASES, ids=[c[0] or "<empty>" for c in CASES])
def test_scope_table(scope: str, allowed: frozenset[str]) -> None:
    access = access_for(GrantedScopes.parse(scope), "ehr-a", "p1")
    assert access.resource_types == allowed


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len(CATEGORY_CASES) >= 20


@pytest.mark.parametrize("scope", [c[0] for c in CASES if c[0]])
def test_never_wider_than_each_token_alone(scope: str) -> None:
    """The union of what each token grants on its own: combining tokens never adds a type."""
    together = access_for(GrantedScopes.parse(scope), "ehr-a", "p1").resource_types
    alone: set[str] = set()
    for token in scope.split():
        alone |= access_for(GrantedScopes.parse(token), "ehr-a", "p1").resource_types
    assert together == alone


@pytest.mark.parametrize(
    "token",
    ["patient/Observation.sr", "patient/observation.rs", "Patient/*.rs", "patient/*", "x/y.rs"],
)
def test_malformed_tokens_do_not_parse(token: str) -> None:
    assert parse_scope(token) is None


def test_the_access_filter_needs_both_keys() -> None:
    scopes = GrantedScopes.parse("patient/*.rs")
    with pytest.raises(ValueError):
        access_for(scopes, "", "p1")
    with pytest.raises(ValueError):
        access_for(scopes, "ehr-a", "")
    narrowed = access_for(scopes, "ehr-a", "p1").narrowed(OBS | {"NotAType"})
    assert narrowed.resource_types == OBS  # narrowing never adds


# -- SMART v2 granular scopes: ``?category=`` restricts a type to resources of those categories ------

OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
LAB = (OBS_CAT, "laboratory")
VITALS = (OBS_CAT, "vital-signs")
WHOLE = None  # the whole type
CATEGORY_TYPES = frozenset(
    {
        "Observation",
        "Condition",
        "DocumentReference",
        "AllergyIntolerance",
        "MedicationRequest",
        "Procedure",
    }
)
Expected = dict[str, frozenset[tuple[str | None, str]] | None]

CATEGORY_CASES: list[tuple[str, Expected]] = [
    # good: system|code, bare code, percent-encoded bar, comma OR
    (f"patient/Observation.rs?category={OBS_CAT}|laboratory", {"Observation": frozenset({LAB})}),
    (
        "patient/Observation.rs?category=laboratory",
        {"Observation": frozenset({(None, "laboratory")})},
    ),
    (f"patient/Observation.rs?category={OBS_CAT}%7Claboratory", {"Observation": frozenset({LAB})}),
    (
        f"patient/Observation.rs?category={OBS_CAT}|laboratory,{OBS_CAT}|vital-signs",
        {"Observation": frozenset({LAB, VITALS})},
    ),
    (
        f"patient/Observation.rs?category=laboratory,{OBS_CAT}|vital-signs",
        {"Observation": frozenset({(None, "laboratory"), VITALS})},
    ),
    (f"user/Observation.rs?category={OBS_CAT}|laboratory", {"Observation": frozenset({LAB})}),
    (f"patient/Observation.read?category={OBS_CAT}|laboratory", {"Observation": frozenset({LAB})}),
    (f"patient/Observation.cruds?category={OBS_CAT}|laboratory", {"Observation": frozenset({LAB})}),
    (
        f"patient/Condition.rs?category={COND_CAT}|problem-list-item",
        {"Condition": frozenset({(COND_CAT, "problem-list-item")})},
    ),
    (
        f"patient/Condition.rs?category={COND_CAT}|encounter-diagnosis,{COND_CAT}|health-concern",
        {"Condition": frozenset({(COND_CAT, "encounter-diagnosis"), (COND_CAT, "health-concern")})},
    ),
    (
        "patient/DocumentReference.rs?category=clinical-note",
        {"DocumentReference": frozenset({(None, "clinical-note")})},
    ),
    (
        "patient/AllergyIntolerance.rs?category=food",
        {"AllergyIntolerance": frozenset({(None, "food")})},
    ),
    # several scope tokens for one type: a union
    (
        " ".join(
            (
                f"patient/Observation.rs?category={OBS_CAT}|laboratory",
                f"patient/Observation.rs?category={OBS_CAT}|vital-signs",
            )
        ),
        {"Observation": frozenset({LAB, VITALS})},
    ),
    # a non-query scope for the type widens it to the whole type (in either order)
    (
        f"patient/Observation.rs?category={OBS_CAT}|laboratory patient/Observation.rs",
        {"Observation": WHOLE},
    ),
    (
        f"patient/Observation.rs patient/Observation.rs?category={OBS_CAT}|laboratory",
        {"Observation": WHOLE},
    ),
    (f"patient/*.rs patient/Observation.rs?category={OBS_CAT}|laboratory", dict.fromkeys(ALL)),
    # a wildcard restriction applies to every type with a category element, and no other
    (
        "patient/*.rs?category=laboratory",
        dict.fromkeys(CATEGORY_TYPES, frozenset({(None, "laboratory")})),
    ),
    (
        f"patient/*.rs?category=laboratory patient/Observation.rs?category={OBS_CAT}|vital-signs",
        dict.fromkeys(CATEGORY_TYPES, frozenset({(None, "laboratory")}))
        | {"Observation": frozenset({(None, "laboratory"), VITALS})},
    ),
    # restricted and unrestricted types side by side
    (
        f"patient/Observation.rs?category={OBS_CAT}|laboratory patient/Condition.rs",
        {"Observation": frozenset({LAB}), "Condition": WHOLE},
    ),
    # never widened: a query chartcite does not understand grants no read of the type
    ("patient/Observation.rs?code=http://loinc.org|4548-4", {}),
    (f"patient/Observation.rs?category={OBS_CAT}|laboratory&code=4548-4", {}),
    ("patient/Observation.rs?category=laboratory&category=vital-signs", {}),  # AND: not understood
    ("patient/Observation.rs?category:not=laboratory", {}),  # a modifier
    ("patient/Observation.rs?category=", {}),
    ("patient/Observation.rs?category", {}),
    ("patient/Observation.rs?category=|laboratory", {}),  # "no system": not understood
    (f"patient/Observation.rs?category={OBS_CAT}|", {}),  # "any code of the system"
    ("patient/Observation.rs?category=a|b|c", {}),
    ("patient/Observation.rs?category=a\\,b", {}),  # an escaped comma
    ("patient/Observation.rs?category=laboratory,", {}),
    ("patient/Observation.rs?_id=abc", {}),
    ("patient/Observation.rs?category=lab%20oratory", {}),
    # a bad restriction next to a good one neither spoils nor widens it
    (
        f"patient/Observation.rs?code=4548-4 patient/Observation.rs?category={OBS_CAT}|laboratory",
        {"Observation": frozenset({LAB})},
    ),
    # restrictions need read and search, like any chart read
    (f"patient/Observation.r?category={OBS_CAT}|laboratory", {}),
    (f"patient/Observation.s?category={OBS_CAT}|laboratory", {}),
    (f"system/Observation.rs?category={OBS_CAT}|laboratory", {}),
    # types without a category element: a restriction admits nothing
    ("patient/Encounter.rs?category=x patient/Immunization.rs?category=y", {}),
]


def _as_expected(scope: str) -> Expected:
    access = access_for(GrantedScopes.parse(scope), "ehr-a", "p1")
    return {t: access.restricted(t) for t in access.resource_types}


@pytest.mark.parametrize(("scope", "expected"), CATEGORY_CASES, ids=[c[0] for c in CATEGORY_CASES])
def test_category_scope_table(scope: str, expected: Expected) -> None:
    got = _as_expected(scope)
    if "MedicationRequest" in expected and expected["MedicationRequest"] is WHOLE:
        expected = expected | {"Medication": WHOLE}
    assert got == expected


def _wider_or_equal(
    a: frozenset[tuple[str | None, str]] | None, b: frozenset[tuple[str | None, str]] | None
) -> bool:
    """Does restriction ``a`` admit at least what ``b`` admits (``None``: whole type)?"""
    return a is None or (b is not None and b <= a)


@pytest.mark.parametrize("scope", [c[0] for c in CATEGORY_CASES])
def test_category_tokens_together_are_never_wider_than_alone(scope: str) -> None:
    """Per type: what the tokens grant together is what the widest token grants, or the union of
    their restrictions; never more."""
    together = _as_expected(scope)
    alone = [_as_expected(t) for t in scope.split()]
    for rtype, restriction in together.items():
        grants = [a[rtype] for a in alone if rtype in a]
        assert grants, rtype
        if WHOLE in grants:
            assert restriction is WHOLE
        else:
            union = frozenset().union(*(g or frozenset() for g in grants))
            assert restriction == union
            assert all(_wider_or_equal(restriction, g) for g in grants)
    assert set(together) == set().union(*alone)


def test_a_narrow_session_is_never_an_unrestricted_one() -> None:
    scopes = GrantedScopes.parse(f"patient/Observation.rs?category={OBS_CAT}|laboratory")
    assert not scopes.can_read("Observation")  # the whole type: no
    assert scopes.read_restriction("Observation") == frozenset({LAB})
    assert scopes.readable_types(ALL) == OBS
    access = access_for(scopes, "ehr-a", "p1")
    assert access.narrowed(ALL).restricted("Observation") == frozenset({LAB})
    assert access.widened_for_support(OBS).restricted("Observation") == frozenset({LAB})
    assert "p1" not in repr(access)
    assert access.admits(
        {
            "resourceType": "Observation",
            "category": [{"coding": [{"system": OBS_CAT, "code": "laboratory"}]}],
        }
    )
    assert not access.admits(
        {
            "resourceType": "Observation",
            "category": [{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}],
        }
    )
