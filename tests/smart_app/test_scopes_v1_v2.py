"""SMART scope grammar v1 and v2 (SMART App Launch 2.x, Scopes and Launch Context)."""

from __future__ import annotations

import pytest

from smart_app.scopes import GrantedScopes, parse_scope
from smart_app.session import access_for


@pytest.mark.parametrize(
    ("scope", "rtype", "readable"),
    [
        ("patient/Observation.read", "Observation", True),
        ("patient/Observation.rs", "Observation", True),
        ("patient/Observation.r", "Observation", False),  # read without search cannot sync
        ("patient/Observation.s", "Observation", False),
        ("patient/*.read", "MedicationRequest", True),
        ("patient/*.cruds", "Condition", True),
        ("patient/*.*", "Condition", True),
        ("user/Observation.rs", "Observation", True),
        ("system/Observation.rs", "Observation", False),
        ("patient/Observation.write", "Observation", False),
        ("patient/Observation.sr", "Observation", False),  # letters out of canonical order
        (
            "patient/Observation.rs?category=laboratory",
            "Observation",
            False,
        ),  # restricted: conservative
        ("patient/Observation.rs", "MedicationRequest", False),
        ("launch openid fhirUser", "Observation", False),
    ],
)
def test_can_read(scope: str, rtype: str, readable: bool) -> None:
    assert GrantedScopes.parse(scope).can_read(rtype) is readable


def test_parse_rejects_junk() -> None:
    for junk in (
        "patient/observation.rs",
        "patient/Observation",
        "patient/Observation.xyz",
        "openid",
        "",
    ):
        assert parse_scope(junk) is None


def test_access_filter_from_granted_scopes() -> None:
    access = access_for(
        GrantedScopes.parse("launch openid fhirUser patient/Observation.rs"), "ehr-a", "p1"
    )
    assert access.resource_types == frozenset({"Observation"})
    full = access_for(GrantedScopes.parse("patient/*.rs"), "ehr-a", "p1")
    assert {
        "Observation",
        "MedicationRequest",
        "Medication",
        "Patient",
        "DocumentReference",
    } <= full.resource_types
    assert "p1" not in repr(full)
