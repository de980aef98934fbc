"""The access filter every patient-data query requires: one patient, and the resource types allowed.

``smart_app`` builds it from the *granted* SMART scopes; nothing below it knows about SMART.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AccessFilter:
    """Which patient's rows, of which resource types, a caller may see."""

    patient_id: str
    resource_types: frozenset[str]

    def __post_init__(self) -> None:
        if not self.patient_id:
            raise ValueError("an access filter needs a patient id")

    def allows(self, resource_type: str) -> bool:
        return resource_type in self.resource_types

    def narrowed(self, resource_types: frozenset[str]) -> AccessFilter:
        """The same patient, restricted further (never widened)."""
        return AccessFilter(self.patient_id, self.resource_types & resource_types)

    def __repr__(self) -> str:  # types only: a patient id is an identifier, keep it out of logs
        return f"AccessFilter(types={sorted(self.resource_types)})"
