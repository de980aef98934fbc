"""Searchset Bundles and paging of the sandbox FHIR API (FHIR R4 http §3.1.0.11, search §3.1.1.5.6).

A page is a ``Bundle`` of type ``searchset`` with ``total``, absolute ``self`` and ``next`` links,
and entries with ``fullUrl``, ``resource`` and ``search.mode = match``. Paging is stateless: the
``next`` link repeats the query with ``_offset`` moved on by ``_count`` (default 50, at most 500).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from launch.sandbox.errors import BadRequest
from launch.sandbox.store import Resource

DEFAULT_COUNT = 50
MAX_COUNT = 500
#: Paging parameters the API consumes itself (never passed to the store).
PAGING_PARAMS = frozenset({"_count", "_offset"})


@dataclass(frozen=True, slots=True)
class Page:
    """Which slice of the matches to return."""

    count: int
    offset: int


def parse_page(params: Sequence[tuple[str, str]]) -> Page:
    """``_count`` (clamped to ``MAX_COUNT``) and ``_offset`` from the query."""
    values = dict(reversed(list(params)))
    return Page(
        count=min(_non_negative(values, "_count", DEFAULT_COUNT), MAX_COUNT),
        offset=_non_negative(values, "_offset", 0),
    )


def searchset(
    matches: Sequence[Resource],
    *,
    page: Page,
    url: str,
    query: Sequence[tuple[str, str]],
    fhir_base: str,
) -> dict[str, Any]:
    """One page of ``matches`` as a searchset Bundle; ``url`` is the absolute search URL."""
    window = list(matches[page.offset : page.offset + page.count])
    links = [{"relation": "self", "url": _link(url, query, page.count, page.offset)}]
    if page.count > 0 and page.offset + page.count < len(matches):
        following = page.offset + page.count
        links.append({"relation": "next", "url": _link(url, query, page.count, following)})
    if page.offset > 0 and page.count > 0:
        previous = max(page.offset - page.count, 0)
        links.append({"relation": "previous", "url": _link(url, query, page.count, previous)})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "total": len(matches),
        "link": links,
    }
    if window:  # FHIR JSON forbids empty arrays
        bundle["entry"] = [
            {
                "fullUrl": f"{fhir_base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in window
        ]
    return bundle


def _link(url: str, query: Sequence[tuple[str, str]], count: int, offset: int) -> str:
    pairs = [(k, v) for k, v in query if k not in PAGING_PARAMS]
    pairs.append(("_count", str(count)))
    if offset:
        pairs.append(("_offset", str(offset)))
    return f"{url}?{urlencode(pairs)}"


def _non_negative(values: dict[str, str], name: str, default: int) -> int:
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        number = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a non-negative integer.", code="invalid_search") from None
    if number < 0:
        raise BadRequest(f"{name} must be a non-negative integer.", code="invalid_search")
    return number
