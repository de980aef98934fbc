"""SMART v1/v2 scope reading of the sandbox (``launch.sandbox.scopes``)."""

from __future__ import annotations

import pytest

from launch.sandbox.scopes import ResourceScope, allows, intersect, parse_scope, readable_types


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("patient/Observation.read", ResourceScope("patient", "Observation", frozenset("rs"))),
        ("user/*.read", ResourceScope("user", "*", frozenset("rs"))),
        ("patient/*.write", ResourceScope("patient", "*", frozenset("cud"))),
        ("patient/*.*", ResourceScope("patient", "*", frozenset("cruds"))),
        ("patient/Observation.rs", ResourceScope("patient", "Observation", frozenset("rs"))),
        ("patient/*.cruds", ResourceScope("patient", "*", frozenset("cruds"))),
        ("system/Patient.r", ResourceScope("system", "Patient", frozenset("r"))),
        (
            "patient/Observation.rs?category=laboratory",
            ResourceScope("patient", "Observation", frozenset("rs"), "category=laboratory"),
        ),
    ],
)
def test_parse_resource_scopes(scope: str, expected: ResourceScope) -> None:
    assert parse_scope(scope) == expected


@pytest.mark.parametrize(
    "scope",
    [
        "openid",
        "launch",
        "launch/patient",
        "fhirUser",
        "patient/Observation.",
        "patient/obs.rs",
        "patient/Observation.sr",
        "doctor/Observation.rs",
    ],
)
def test_non_resource_scopes_parse_to_none(scope: str) -> None:
    assert parse_scope(scope) is None


def test_allows_read_and_search() -> None:
    assert allows(["patient/Observation.rs"], "Observation", "read")
    assert allows(["patient/Observation.rs"], "Observation", "search")
    assert allows(["patient/Observation.r"], "Observation", "read")
    assert not allows(["patient/Observation.r"], "Observation", "search")
    assert not allows(["patient/Observation.s"], "Observation", "read")
    assert allows(["patient/Observation.read"], "Observation", "search")
    assert allows(["user/*.read"], "Condition", "read")
    assert not allows(["patient/Observation.rs"], "Condition", "read")
    assert not allows(["patient/*.cud", "patient/*.write"], "Condition", "read")
    assert allows(["patient/Observation.rs?category=laboratory"], "Observation", "read")
    assert not allows(["openid", "launch"], "Patient", "read")


def test_readable_types_keeps_input_order() -> None:
    scopes = ["patient/Observation.rs", "patient/Condition.read", "patient/Encounter.c"]
    types = ["Patient", "Observation", "Encounter", "Condition"]
    assert readable_types(scopes, types) == ["Observation", "Condition"]


def test_intersect_keeps_covered_restriction_scopes_and_context_scopes() -> None:
    restriction = [
        "patient/Observation.rs",
        "patient/Condition.read",
        "user/Encounter.rs",
        "patient/MedicationRequest.cruds",
        "patient/Immunization.rs?status=completed",
    ]
    requested = [
        "launch",
        "openid",
        "fhirUser",
        "offline_access",
        "patient/*.read",
        "patient/Condition.rs",
    ]
    assert intersect(restriction, requested) == [
        "patient/Observation.rs",
        "patient/Condition.read",
        "patient/Immunization.rs?status=completed",
        "launch",
        "openid",
        "fhirUser",
        "offline_access",
    ]


def test_intersect_v1_and_v2_read_are_equivalent() -> None:
    assert intersect(["patient/Observation.read"], ["patient/Observation.rs"]) == [
        "patient/Observation.read"
    ]
    assert intersect(["patient/Observation.rs"], ["patient/Observation.read"]) == [
        "patient/Observation.rs"
    ]
    assert intersect(["patient/Observation.rs"], ["patient/Observation.r"]) == []
    assert (
        intersect(["patient/Observation.rs"], ["patient/Observation.rs?category=laboratory"]) == []
    )


def test_intersect_with_empty_restriction_grants_only_context_scopes() -> None:
    assert intersect([], ["launch", "patient/*.rs", "openid"]) == ["launch", "openid"]
