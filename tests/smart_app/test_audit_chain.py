"""Hash chain verification (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from smart_app.audit import GENESIS, AuditRecord, chain_hash, verify_chain


def _rows(n: int) -> list[dict[str, Any]]:
    rows, prev = [], GENESIS
    t = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        rec = AuditRecord("ask", "ok", actor="Practitioner/1", patient_id="p", detail={"i": i})
        at = t + timedelta(seconds=i)
        h = chain_hash(prev, rec, at)
        rows.append(
            {
                "seq": i + 1,
                "recorded_at": at,
                "action": rec.action,
                "outcome": rec.outcome,
                "actor": rec.actor,
                "client_id": None,
                "patient_id": "p",
                "detail": {"i": i},
                "prev_hash": prev,
                "hash": h,
            }
        )
        prev = h
    return rows


def test_intact_chain_verifies() -> None:
    report = verify_chain(_rows(5))
    assert report.ok and report.rows == 5


def test_altered_deleted_or_reordered_rows_break_the_chain() -> None:
    altered = _rows(5)
    altered[2]["detail"] = {"i": 99}
    assert verify_chain(altered).first_bad_seq == 3
    deleted = _rows(5)
    del deleted[1]
    assert verify_chain(deleted).first_bad_seq == 3
    swapped = _rows(5)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    assert not verify_chain(swapped).ok
    rehashed = _rows(3)
    rehashed[1]["outcome"] = "denied"  # attacker recomputes this row's hash...
    rehashed[1]["hash"] = chain_hash(
        rehashed[1]["prev_hash"],
        AuditRecord("ask", "denied", actor="Practitioner/1", patient_id="p", detail={"i": 1}),
        rehashed[1]["recorded_at"],
    )
    assert verify_chain(rehashed).first_bad_seq == 3  # ...and the next link breaks
