"""The access filter every patient-data query requires: one EHR, one patient, the types allowed.

A patient is identified by **(EHR source, patient id)**: two registered EHRs may both have a
``Patient/123`` and their rows must never meet, so the filter cannot be built without both.
``smart_app`` builds it from the *granted* SMART scopes; nothing below it knows about SMART.

A type may also be restricted to resources whose ``category`` carries one of a set of codings
(``(system, code)``; ``system`` ``None`` matches the code in any system, and a bare-code category
such as AllergyIntolerance's). Types absent from ``categories`` are unrestricted. The SQL form of
the same test is ``fhir_adapters.repository.visible_sql``; ``admits`` is its twin for resources
that are not stored yet (a sync drops what the filter would hide).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: ``(system or None for any system, code)``.
Coding = tuple[str | None, str]


def category_matches(resource: Mapping[str, Any], wanted: frozenset[Coding]) -> bool:
    """Does any ``category`` coding of the resource match one of ``wanted``?

    ``category`` may be a list or a single element (Procedure), each a CodeableConcept or a bare
    code (AllergyIntolerance); a code-only coding matches a bare code too."""
    value = resource.get("category")
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, str):
            if (None, item) in wanted:
                return True
        elif isinstance(item, Mapping):
            for c in item.get("coding") or []:
                if not isinstance(c, Mapping) or not isinstance(c.get("code"), str):
                    continue
                if (None, c["code"]) in wanted or (c.get("system"), c["code"]) in wanted:
                    return True
    return False


@dataclass(frozen=True, slots=True)
class AccessFilter:
    """Which EHR's patient, and which resource types (and categories) of that chart, a caller may
    see."""

    source: str
    patient_id: str
    resource_types: frozenset[str]
    #: Per type: the category codings its resources must carry (absent: the whole type).
    categories: Mapping[str, frozenset[Coding]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("an access filter needs the EHR source key")
        if not self.patient_id:
            raise ValueError("an access filter needs a patient id")
        cats = {t: frozenset(c) for t, c in self.categories.items()}
        # A restriction that admits nothing is no read of the type; one for a type not allowed
        # means nothing. Neither may widen: both only take away.
        types = frozenset(t for t in self.resource_types if cats.get(t, True))
        object.__setattr__(self, "resource_types", types)
        object.__setattr__(
            self, "categories", MappingProxyType({t: c for t, c in cats.items() if t in types})
        )

    def __hash__(self) -> int:
        return hash(
            (self.source, self.patient_id, self.resource_types, frozenset(self.categories.items()))
        )

    def allows(self, resource_type: str) -> bool:
        """May some resources of this type be seen (all of them, or those of a category)?"""
        return resource_type in self.resource_types

    def restricted(self, resource_type: str) -> frozenset[Coding] | None:
        """The category codings a type is restricted to; ``None``: not restricted."""
        return self.categories.get(resource_type)

    def admits(self, resource: Mapping[str, Any]) -> bool:
        """May this resource be seen: its type allowed and, if restricted, its category matching."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not self.allows(rtype):
            return False
        wanted = self.categories.get(rtype)
        return wanted is None or category_matches(resource, wanted)

    def narrowed(self, resource_types: frozenset[str]) -> AccessFilter:
        """The same patient, restricted further (never widened: category restrictions stay)."""
        return AccessFilter(
            self.source, self.patient_id, self.resource_types & resource_types, self.categories
        )

    def widened_for_support(self, support_types: frozenset[str]) -> AccessFilter:
        """The same patient plus support types (``Medication``) reached from its own resources
        (a type already restricted stays restricted)."""
        return AccessFilter(
            self.source, self.patient_id, self.resource_types | support_types, self.categories
        )

    def __repr__(self) -> str:  # types only: a patient id is an identifier, keep it out of logs
        cats = {t: sorted(f"{s or '*'}|{c}" for s, c in v) for t, v in self.categories.items()}
        restricted = f", categories={dict(sorted(cats.items()))}" if cats else ""
        return (
            f"AccessFilter(source={self.source!r}, types={sorted(self.resource_types)}{restricted})"
        )
