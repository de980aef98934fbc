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
    # granular v2 scopes with a query: read conservatively as no read of the type (never widened
    # to the whole type)
    ("patient/Observation.rs?category=laboratory", NONE),
    (
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        NONE,
    ),
    ("patient/Observation.rs?category=laboratory patient/Condition.rs", frozenset({"Condition"})),
    ("patient/*.rs?category=laboratory", NONE),
    ("patient/Observation.rs?", NONE),
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
