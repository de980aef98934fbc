"""Citation validation (DESIGN.md step 6): every cited id must be (i) in this request's retrieval
set, (ii) a stored resource of this patient that the access filter shows — ``stored`` comes from
``fhir_adapters.existing_refs``, which applies the filter's category restrictions —, (iii) of a
type the access filter allows.

A fact statement with any invalid citation is removed; a fact statement without citations is never
returned as fact. Notices carry no citations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rag.answer import Statement


@dataclass(frozen=True)
class Validation:
    kept: list[Statement]
    removed: int


def parse_ref(value: str) -> tuple[str, str] | None:
    parts = value.split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


def cited_refs(statements: Iterable[Statement]) -> set[tuple[str, str]]:
    return {r for s in statements for c in s.citations if (r := parse_ref(c)) is not None}


def validate_statements(
    statements: Sequence[Statement],
    *,
    retrieved: set[str],
    stored: set[tuple[str, str]],
    allowed_types: frozenset[str],
) -> Validation:
    kept: list[Statement] = []
    removed = 0
    for s in statements:
        if s.kind == "notice":
            if s.citations:
                removed += 1
            else:
                kept.append(s)
            continue
        ok = bool(s.citations) and all(
            c in retrieved
            and (r := parse_ref(c)) is not None
            and r in stored
            and r[0] in allowed_types
            for c in s.citations
        )
        if ok:
            kept.append(s)
        else:
            removed += 1
    return Validation(kept, removed)
