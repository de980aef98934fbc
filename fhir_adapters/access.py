"""The access filter every patient-data query requires: one EHR, one patient, the types allowed.

A patient is identified by **(EHR source, patient id)**: two registered EHRs may both have a
``Patient/123`` and their rows must never meet, so the filter cannot be built without both.
``smart_app`` builds it from the *granted* SMART scopes; nothing below it knows about SMART.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AccessFilter:
    """Which EHR's patient, and which resource types of that chart, a caller may see."""

    source: str
    patient_id: str
    resource_types: frozenset[str]

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("an access filter needs the EHR source key")
        if not self.patient_id:
            raise ValueError("an access filter needs a patient id")

    def allows(self, resource_type: str) -> bool:
        return resource_type in self.resource_types

    def narrowed(self, resource_types: frozenset[str]) -> AccessFilter:
        """The same patient, restricted further (never widened)."""
        return AccessFilter(self.source, self.patient_id, self.resource_types & resource_types)

    def widened_for_support(self, support_types: frozenset[str]) -> AccessFilter:
        """The same patient plus support types (``Medication``) reached from its own resources."""
        return AccessFilter(self.source, self.patient_id, self.resource_types | support_types)

    def __repr__(self) -> str:  # types only: a patient id is an identifier, keep it out of logs
        return f"AccessFilter(source={self.source!r}, types={sorted(self.resource_types)})"
