"""Signed checkpoints and verification against them (pure): each tampering has its reason."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from smart_app.audit import GENESIS, chain_hash, row_record
from smart_app.audit_anchor import (
    AuditKeyring,
    Checkpoint,
    derive_key,
    key_id,
    sign,
    verify_with_checkpoints,
)
from tests.smart_app.test_audit_chain import _rows

TOKEN_KEY = base64.b64encode(b"k" * 32).decode()
KEYS = AuditKeyring.from_config(audit_key=None, token_key=TOKEN_KEY)


def _checkpoint(rows: list[dict[str, Any]], prev: str = GENESIS, seq: int = 1) -> Checkpoint:
    head = rows[-1]
    cp = sign(
        KEYS,
        Checkpoint(len(rows), head["seq"], head["hash"], datetime.now(UTC), "", prev),
    )
    return Checkpoint(**{**cp.__dict__, "seq": seq})


def _reasons(rows: list[dict[str, Any]], cps: list[Checkpoint]) -> list[str]:
    return [p.reason for p in verify_with_checkpoints(rows, cps, KEYS).problems]


def _rechain(rows: list[dict[str, Any]]) -> None:
    prev = GENESIS
    for row in rows:
        row["prev_hash"] = prev
        row["hash"] = prev = chain_hash(prev, row_record(row), row["recorded_at"])


def test_the_key_is_derived_not_reused_and_named_without_revealing_it() -> None:
    assert derive_key(TOKEN_KEY) != base64.b64decode(TOKEN_KEY)
    assert KEYS.current_id == key_id(derive_key(TOKEN_KEY)) and KEYS.current_id.startswith("ak-")
    assert "k" * 8 not in repr(KEYS)


def test_intact_rows_and_checkpoints_verify() -> None:
    rows = _rows(6)
    first = _checkpoint(rows[:3])
    report = verify_with_checkpoints(rows, [first, _checkpoint(rows, first.signature, 2)], KEYS)
    assert report.ok and report.anchored_rows == 6 and report.unanchored_rows == 0


def test_deleted_tail_is_found() -> None:
    rows = _rows(5)
    cp = _checkpoint(rows)
    (reason,) = _reasons(rows[:3], [cp])
    assert "the table ends at seq 3: the newest records were deleted" in reason


def test_recomputed_chain_is_found() -> None:
    rows = _rows(5)
    cp = _checkpoint(rows)
    rows[1]["outcome"] = "denied"
    _rechain(rows)
    (reason,) = _reasons(rows, [cp])
    assert "the chain was recomputed after an edit" in reason


def test_inserted_row_is_found_by_the_count() -> None:
    rows = _rows(4)
    del rows[1]  # a gap (a rolled-back append) before the checkpoint...
    _rechain(rows)
    cp = _checkpoint(rows)
    forged = dict(rows[0], seq=2, detail={"forged": True})
    rows.insert(1, forged)  # ...filled later, with every hash recomputed
    _rechain(rows)
    reasons = _reasons(rows, [cp])
    assert any("signed 3 records up to seq 4, the table has 4" in r for r in reasons)


def test_forged_unknown_and_unlinked_checkpoints_are_found() -> None:
    rows = _rows(3)
    good = _checkpoint(rows)
    forged = Checkpoint(**{**good.__dict__, "row_count": 2, "seq": 1})
    assert any("signature does not verify" in r for r in _reasons(rows, [forged]))
    other = AuditKeyring(b"x" * 32)
    foreign = sign(other, Checkpoint(3, 3, rows[-1]["hash"], datetime.now(UTC), "", GENESIS))
    assert any("unknown key" in r for r in _reasons(rows, [foreign]))
    unlinked = _checkpoint(rows, prev="f" * 64)
    assert any("does not follow" in r for r in _reasons(rows, [unlinked]))


def test_retired_keys_still_verify_and_json_round_trips() -> None:
    rows = _rows(2)
    cp = _checkpoint(rows)
    rotated = AuditKeyring(b"n" * 32, retired=[derive_key(TOKEN_KEY)])
    assert verify_with_checkpoints(rows, [Checkpoint.from_json(cp.to_json())], rotated).ok
