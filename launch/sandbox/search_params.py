"""FHIR R4 search parameter semantics used by the sandbox store (pure functions).

- Dates (FHIR R4 search §3.1.1.4.2 "date"): every value is an implicit range given by its
  precision (``2024`` is the whole year, ``2024-03-01T10:00:00Z`` one second) and the prefixes
  ``eq ne gt lt ge le sa eb`` compare the resource's range with the parameter's range.
- Tokens (§3.1.1.4.3 "token"): ``system|code``, ``|code`` (no system), ``system|`` and ``code``;
  a CodeableConcept matches when any of its codings does.
- A value with commas is an OR of its parts (§3.1.1.2 "composite"/"OR"); repeating a parameter
  is an AND.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from launch.sandbox.errors import BadRequest

_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)

#: Where a resource keeps its clinical date, in order of preference (first present wins).
CLINICAL_DATE_PATHS: tuple[tuple[str, ...], ...] = (
    ("effectiveDateTime",),
    ("effectivePeriod", "start"),
    ("authoredOn",),
    ("onsetDateTime",),
    ("recordedDate",),
    ("occurrenceDateTime",),
    ("performedDateTime",),
    ("performedPeriod", "start"),
    ("period", "start"),
    ("date",),
)


@dataclass(frozen=True, slots=True)
class DateRange:
    """A half-open instant range ``[start, end)`` in UTC."""

    start: datetime
    end: datetime


def parse_date_range(value: str) -> DateRange:
    """Parse a FHIR date/dateTime/instant into the range its precision implies.

    Values without a time zone are read as UTC (the sandbox's local time).
    """
    m = _DATE_RE.match(value.strip())
    if m is None:
        raise BadRequest(f"Invalid date value {value!r}", code="invalid_search")
    year = int(m["y"])
    if m["m"] is None:
        return DateRange(_utc(year, 1, 1), _utc(year + 1, 1, 1))
    month = int(m["m"])
    if m["d"] is None:
        nxt = _utc(year + 1, 1, 1) if month == 12 else _utc(year, month + 1, 1)
        return DateRange(_utc(year, month, 1), nxt)
    day = date(year, month, int(m["d"]))
    if m["H"] is None:
        start = _utc(day.year, day.month, day.day)
        return DateRange(start, start + timedelta(days=1))
    tz: timezone = UTC
    if m["tz"] and m["tz"] != "Z":
        sign = 1 if m["tz"][0] == "+" else -1
        hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    local = datetime(day.year, day.month, day.day, int(m["H"]), int(m["M"]), tzinfo=tz)
    if m["S"] is None:
        start = local.astimezone(UTC)
        return DateRange(start, start + timedelta(minutes=1))
    start = (local + timedelta(seconds=int(m["S"]))).astimezone(UTC)
    if m["f"] is None:
        return DateRange(start, start + timedelta(seconds=1))
    micros = int(m["f"][:6].ljust(6, "0"))
    start += timedelta(microseconds=micros)
    return DateRange(start, start + timedelta(microseconds=1))


def split_prefix(value: str) -> tuple[str, str]:
    """Split ``ge2024-01-01`` into ``("ge", "2024-01-01")``; no prefix means ``eq``."""
    if len(value) > 2 and value[:2] in _PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def date_matches(resource_value: str | None, criterion: str) -> bool:
    """Whether a resource date satisfies one prefixed date criterion (FHIR R4 search §3.1.1.4.2)."""
    if not resource_value:
        return False
    prefix, raw = split_prefix(criterion)
    param = parse_date_range(raw)
    try:
        res = parse_date_range(resource_value)
    except BadRequest:
        return False
    if prefix == "eq":
        return res.start >= param.start and res.end <= param.end
    if prefix == "ne":
        return not (res.start >= param.start and res.end <= param.end)
    if prefix == "gt":
        return res.end > param.end
    if prefix == "lt":
        return res.start < param.start
    if prefix == "ge":
        return res.end > param.start
    if prefix == "le":
        return res.start < param.end
    if prefix == "sa":
        return res.start >= param.end
    return res.end <= param.start  # "eb"


def clinical_date(resource: Mapping[str, Any]) -> str | None:
    """The resource's clinical date per ``CLINICAL_DATE_PATHS``, or ``None``."""
    for path in CLINICAL_DATE_PATHS:
        node: Any = resource
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, str) and node:
            return node
    return None


def codings(concepts: Any) -> Iterable[Mapping[str, Any]]:
    """All codings of a CodeableConcept or a list of CodeableConcepts."""
    items = concepts if isinstance(concepts, list) else [concepts]
    for concept in items:
        if isinstance(concept, Mapping):
            for coding in concept.get("coding") or []:
                if isinstance(coding, Mapping):
                    yield coding


def token_matches(concepts: Any, criterion: str) -> bool:
    """Whether any coding matches ``system|code``, ``|code``, ``system|`` or ``code``."""
    if "|" in criterion:
        system, code = criterion.split("|", 1)
        for coding in codings(concepts):
            if system == "" and coding.get("system"):
                continue
            if system and coding.get("system") != system:
                continue
            if code and coding.get("code") != code:
                continue
            return True
        return False
    return any(coding.get("code") == criterion for coding in codings(concepts))


def any_of(value: str) -> list[str]:
    """The OR-ed parts of a parameter value (commas; ``\\,`` is a literal comma)."""
    parts = re.split(r"(?<!\\),", value)
    return [p.replace("\\,", ",") for p in parts if p != ""]


def _utc(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)
