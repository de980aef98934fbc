"""SMART scope grammar, v1 and v2 (SMART App Launch 2.x, "Scopes and Launch Context").

v1: ``patient/Observation.read``, ``user/*.read``, ``patient/*.*``, ``.write``.
v2: ``patient/Observation.rs``, ``patient/*.cruds``; an optional ``?param=value`` restricts further
(we treat a restricted read scope as not granting the whole type, i.e. conservatively: no read).
Only *granted* scopes (the token response) are ever passed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RESOURCE = re.compile(
    r"^(?P<ctx>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perm>\*|read|write|[cruds]+)"
    r"(?P<query>\?.*)?$"
)
_V2_ORDER = "cruds"


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One resource scope: context, type (or ``*``), permissions as a v2 letter set, restriction."""

    context: str
    resource_type: str
    permissions: frozenset[str]
    query: str | None

    @property
    def can_read(self) -> bool:
        return {"r", "s"} <= self.permissions and self.query is None


def parse_scope(token: str) -> ResourceScope | None:
    """Parse one resource scope; ``None`` for non-resource scopes (openid, launch, …) or junk."""
    m = _RESOURCE.match(token)
    if m is None:
        return None
    perm = m["perm"]
    if perm == "*":
        letters = set(_V2_ORDER)
    elif perm == "read":
        letters = {"r", "s"}
    elif perm == "write":
        letters = {"c", "u", "d"}
    else:
        # v2 letters must be in canonical order without repeats (``rs`` yes, ``sr`` no).
        if "".join(c for c in _V2_ORDER if c in perm) != perm:
            return None
        letters = set(perm)
    return ResourceScope(m["ctx"], m["type"], frozenset(letters), m["query"])


@dataclass(frozen=True)
class GrantedScopes:
    """The scopes an authorization server granted, with read checks per resource type."""

    raw: tuple[str, ...]

    @classmethod
    def parse(cls, scope: str | None) -> GrantedScopes:
        return cls(tuple(dict.fromkeys((scope or "").split())))

    def __contains__(self, item: str) -> bool:
        return item in self.raw

    @property
    def resource_scopes(self) -> tuple[ResourceScope, ...]:
        return tuple(s for s in map(parse_scope, self.raw) if s is not None)

    def can_read(self, resource_type: str, contexts: tuple[str, ...] = ("patient", "user")) -> bool:
        return any(
            s.can_read and s.context in contexts and s.resource_type in ("*", resource_type)
            for s in self.resource_scopes
        )

    def readable_types(self, known_types: frozenset[str]) -> frozenset[str]:
        """The subset of ``known_types`` these scopes allow reading (for a patient chart)."""
        return frozenset(t for t in known_types if self.can_read(t))

    def __str__(self) -> str:
        return " ".join(self.raw)
