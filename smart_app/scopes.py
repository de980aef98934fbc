"""SMART scope grammar, v1 and v2 (SMART App Launch 2.x, "Scopes and Launch Context").

v1: ``patient/Observation.read``, ``user/*.read``, ``patient/*.*``, ``.write``.
v2: ``patient/Observation.rs``, ``patient/*.cruds``; an optional ``?param=value`` restricts further
(§ "Finer-grained resource constraints using search parameters"). The one restriction understood is
``category`` (FHIR search on a token: ``system|code`` or a bare ``code``, commas are OR): such a
scope reads only the resources of the type with a matching category coding. Several restricted
scopes for one type are a union; an unrestricted scope for the type widens it to the whole type.
Any other query (another parameter, a modifier, ``|code``, ``system|``, a repeated ``category``, an
escaped comma) is not understood and read conservatively: that scope grants no read at all.
Only *granted* scopes (the token response) are ever passed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

_RESOURCE = re.compile(
    r"^(?P<ctx>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perm>\*|read|write|[cruds]+)"
    r"(?P<query>\?.*)?$"
)
_V2_ORDER = "cruds"
#: ``(system or None for any system, code)``: one category coding a restricted scope admits.
Coding = tuple[str | None, str]
_NO_SPACE = re.compile(r"^\S+$")


def category_codings(query: str | None) -> frozenset[Coding] | None:
    """The codings a ``?category=…`` restriction admits; ``None`` if the query is anything else.

    ``category=http://…/observation-category|laboratory`` → ``{(system, "laboratory")}``;
    ``category=laboratory,vital-signs`` → two code-only codings (any system).
    """
    if not query or not query.startswith("?"):
        return None
    try:
        pairs = parse_qsl(query[1:], keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return None
    if len(pairs) != 1 or pairs[0][0] != "category":
        return None
    codings: set[Coding] = set()
    for part in pairs[0][1].split(","):
        if "\\" in part or not _NO_SPACE.match(part) or part.count("|") > 1:
            return None
        system, bar, code = part.rpartition("|")
        if bar and (not system or not code):
            return None  # ``|code`` (no system) and ``system|`` (any code) are not understood
        codings.add((system or None, code))
    return frozenset(codings)


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One resource scope: context, type (or ``*``), permissions as a v2 letter set, restriction."""

    context: str
    resource_type: str
    permissions: frozenset[str]
    query: str | None

    @property
    def reads(self) -> bool:
        """Read and search (a chart cannot be pulled with one of them alone)."""
        return {"r", "s"} <= self.permissions

    @property
    def can_read(self) -> bool:
        """Reads the whole type (no restriction)."""
        return self.reads and self.query is None

    @property
    def categories(self) -> frozenset[Coding] | None:
        """The category codings a restricted read admits (``None``: not a restricted read that
        chartcite understands; an unrestricted scope has no categories either)."""
        return category_codings(self.query) if self.reads else None


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

    def _for(self, resource_type: str, contexts: tuple[str, ...]) -> list[ResourceScope]:
        return [
            s
            for s in self.resource_scopes
            if s.context in contexts and s.resource_type in ("*", resource_type)
        ]

    def can_read(self, resource_type: str, contexts: tuple[str, ...] = ("patient", "user")) -> bool:
        """May the whole type be read (an unrestricted read scope covers it)?"""
        return any(s.can_read for s in self._for(resource_type, contexts))

    def read_restriction(
        self, resource_type: str, contexts: tuple[str, ...] = ("patient", "user")
    ) -> frozenset[Coding] | None:
        """The category codings a restricted read of the type admits: the union over the
        granted restricted scopes. ``None`` when the whole type is readable, or when it is not
        readable at all (tell them apart with ``can_read``); never wider than the scopes."""
        scopes = self._for(resource_type, contexts)
        if any(s.can_read for s in scopes):
            return None
        union: frozenset[Coding] = frozenset()
        for s in scopes:
            union |= s.categories or frozenset()
        return union or None

    def readable(self, known_types: frozenset[str]) -> dict[str, frozenset[Coding] | None]:
        """``{type: None (whole type) | category codings}`` of ``known_types`` these scopes let a
        patient chart read; types not readable at all are absent."""
        out: dict[str, frozenset[Coding] | None] = {}
        for t in sorted(known_types):
            if self.can_read(t):
                out[t] = None
            elif (codings := self.read_restriction(t)) is not None:
                out[t] = codings
        return out

    def readable_types(self, known_types: frozenset[str]) -> frozenset[str]:
        """The subset of ``known_types`` these scopes allow reading, wholly or restricted."""
        return frozenset(self.readable(known_types))

    def __str__(self) -> str:
        return " ".join(self.raw)
