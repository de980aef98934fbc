"""Hash-chained audit records (pure): canonical form, hashing and chain verification.

Each record's ``hash`` is SHA-256 over the previous record's hash and the record's canonical JSON,
so altering, inserting or removing a row in the middle breaks every later link. The database also
refuses UPDATE/DELETE/TRUNCATE on the table (see migration 0001). Deleting the newest rows or
recomputing the whole chain is caught by signed checkpoints (``smart_app/audit_anchor.py``).
Maps to FHIR AuditEvent (``smart_app/audit_fhir.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    """What happened: who, to which patient, what action, with what result."""

    action: str
    outcome: str
    actor: str | None = None
    client_id: str | None = None
    patient_id: str | None = None
    source: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


def canonical(record: AuditRecord, recorded_at: datetime) -> str:
    """Stable JSON of the hashed fields (sorted keys, no whitespace, UTC ISO timestamp).

    ``source`` is hashed when set; rows written before it existed (NULL) keep their hashes.
    """
    fields: dict[str, Any] = {
        "action": record.action,
        "actor": record.actor,
        "client_id": record.client_id,
        "detail": dict(record.detail),
        "outcome": record.outcome,
        "patient_id": record.patient_id,
        "recorded_at": recorded_at.isoformat(timespec="microseconds"),
    }
    if record.source is not None:
        fields["source"] = record.source
    return json.dumps(
        fields,
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )


def chain_hash(prev_hash: str, record: AuditRecord, recorded_at: datetime) -> str:
    return hashlib.sha256((prev_hash + canonical(record, recorded_at)).encode()).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    rows: int
    ok: bool
    first_bad_seq: int | None = None
    reason: str | None = None


def row_record(row: Mapping[str, Any]) -> AuditRecord:
    """The record a stored audit row holds (what its hash was computed over)."""
    return AuditRecord(
        action=row["action"],
        outcome=row["outcome"],
        actor=row["actor"],
        client_id=row["client_id"],
        patient_id=row["patient_id"],
        source=row.get("source"),
        detail=row["detail"],
    )


def verify_chain(rows: Iterable[Mapping[str, Any]]) -> ChainReport:
    """Check links and hashes of rows ordered by ``seq``; report the first break."""
    prev = GENESIS
    n = 0
    for row in rows:
        n += 1
        if row["prev_hash"] != prev:
            return ChainReport(n, False, row["seq"], "prev_hash does not match the previous row")
        if chain_hash(prev, row_record(row), row["recorded_at"]) != row["hash"]:
            return ChainReport(n, False, row["seq"], "row content does not match its hash")
        prev = row["hash"]
    return ChainReport(n, True)
