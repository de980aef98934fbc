"""SMART scopes as the sandbox EHR reads them (SMART App Launch 2.x, "Scopes and Launch Context").

- v1: ``patient/Observation.read``, ``user/*.read``, ``patient/*.write``, ``patient/*.*``;
  ``read`` means v2 ``rs``, ``write`` means ``cud``, ``*`` means ``cruds``.
- v2: ``patient/Observation.rs``, ``patient/*.cruds``; a ``?param=value`` suffix narrows the scope
  to matching resources. The sandbox deliberately enforces it at type level (a narrowed scope
  still lets the token read the type), but keeps it when intersecting scopes at authorize time.

Pure functions, no I/O: "may this token read type T?" and the authorize-time intersection of an
EHR launch's scope restriction with the scopes an app requested.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

_RESOURCE_SCOPE = re.compile(
    r"^(?P<ctx>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]*)"
    r"\.(?P<perm>\*|read|write|c?r?u?d?s?)(?P<query>\?.+)?$"
)
_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}

#: Scopes that carry no data access of their own; kept when requested, whatever the restriction.
CONTEXT_SCOPES = frozenset(
    {
        "launch", "launch/patient", "launch/encounter", "openid", "fhirUser", "profile",
        "offline_access", "online_access",
    }
)  # fmt: skip

Interaction = Literal["read", "search"]


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """A parsed resource scope: context, type (or ``*``), v2 permission letters, query suffix."""

    context: str
    resource_type: str
    permissions: frozenset[str]
    query: str | None = None

    def covers_type(self, resource_type: str) -> bool:
        return self.resource_type in ("*", resource_type)

    def covers(self, other: ResourceScope) -> bool:
        """Whether this scope grants everything ``other`` grants (same context, wider or equal)."""
        if self.context != other.context or not self.covers_type(other.resource_type):
            return False
        if not other.permissions <= self.permissions:
            return False
        return self.query is None or self.query == other.query


def parse_scope(scope: str) -> ResourceScope | None:
    """Parse one resource scope; ``None`` for context scopes (``openid``, ``launch``…) or junk."""
    m = _RESOURCE_SCOPE.match(scope)
    if m is None or m["perm"] == "":
        return None
    perm = _V1_PERMISSIONS.get(m["perm"], m["perm"])
    query = m["query"][1:] if m["query"] else None
    return ResourceScope(m["ctx"], m["type"], frozenset(perm), query)


def split_scope(scope: str | None) -> list[str]:
    """Split a space-separated scope string (RFC 6749 §3.3), dropping duplicates, keeping order."""
    return list(dict.fromkeys((scope or "").split()))


def allows(scopes: Iterable[str], resource_type: str, interaction: Interaction) -> bool:
    """Whether any granted resource scope lets the token read (``r``) or search (``s``) the type.

    The scope context (``patient``/``user``) is not checked here; the caller applies the token's
    patient context.
    """
    letter = "r" if interaction == "read" else "s"
    for raw in scopes:
        parsed = parse_scope(raw)
        if (
            parsed is not None
            and parsed.covers_type(resource_type)
            and letter in parsed.permissions
        ):
            return True
    return False


def readable_types(scopes: Iterable[str], resource_types: Iterable[str]) -> list[str]:
    """The subset of ``resource_types`` the scopes allow to read or search, in input order."""
    granted = list(scopes)
    return [t for t in resource_types if allows(granted, t, "read") or allows(granted, t, "search")]


def intersect(restriction: Iterable[str], requested: Iterable[str]) -> list[str]:
    """Scopes to grant when an EHR launch restricts what the user may hand over.

    Keeps each restriction scope that some requested scope covers (``patient/*.rs`` covers
    ``patient/Observation.rs``; v1 ``.read`` equals v2 ``.rs``), then every requested context scope
    (``launch``, ``openid``, ``fhirUser``, ``offline_access``…). Order: restriction, then requested.
    """
    wanted = split_scope(" ".join(requested))
    wanted_parsed = [p for p in (parse_scope(s) for s in wanted) if p is not None]
    granted: list[str] = []
    for scope in split_scope(" ".join(restriction)):
        parsed = parse_scope(scope)
        if parsed is not None and any(w.covers(parsed) for w in wanted_parsed):
            granted.append(scope)
    granted.extend(s for s in wanted if s in CONTEXT_SCOPES)
    return list(dict.fromkeys(granted))
