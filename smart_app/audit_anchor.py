"""Signed checkpoints of the audit chain, and verification of the chain against them (pure).

The hash chain (``smart_app/audit.py``) shows that rows were changed *in the middle*; it cannot
show that its newest rows were deleted, or that someone with write access recomputed every hash
after an edit. A checkpoint anchors the chain outside its own rows: ``(row_count, head_seq,
head_hash)`` at a moment, signed with HMAC-SHA256 (RFC 2104) under a key the database never
holds, and linked to the previous checkpoint by its signature. Verification then finds:

- tail truncation: a checkpoint's head row is gone (or fewer rows than signed);
- re-chaining: the head row exists with another hash than the one signed;
- forged or removed rows: the number of rows up to the head differs from the signed count;
- forged checkpoints: a signature that does not verify, or one that does not link to the previous.

The key: ``CHARTCITE_AUDIT_KEY`` (base64 of 32 bytes) when set, else derived from the token
key (``CHARTCITE_TOKEN_KEY``) with HKDF-SHA256 (RFC 5869) and the label below, so one secret
serves both without one ever revealing the other. Retired keys still verify old checkpoints.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from smart_app.audit import GENESIS, chain_hash, row_record

HKDF_INFO = b"chartcite audit checkpoint v1"
_KID_LABEL = b"chartcite audit key id"


def derive_key(token_key_b64: str) -> bytes:
    """The checkpoint key derived from a token key (HKDF-SHA256, no salt, distinct label)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO)
    return hkdf.derive(base64.b64decode(token_key_b64))


def key_id(key: bytes) -> str:
    """A short public name of a key (an HMAC of a label, so it says nothing about the key)."""
    return "ak-" + hmac.new(key, _KID_LABEL, hashlib.sha256).hexdigest()[:12]


class AuditKeyring:
    """The signing key and the retired keys that still verify. The repr names key ids only."""

    def __init__(self, current: bytes, retired: Iterable[bytes] = ()) -> None:
        self.current = current
        self.current_id = key_id(current)
        self._keys = {key_id(k): k for k in (*retired, current)}

    @classmethod
    def from_config(
        cls,
        *,
        audit_key: str | None,
        audit_keys_retired: Iterable[str] = (),
        token_key: str | None = None,
        token_keys_retired: Iterable[str] = (),
    ) -> AuditKeyring:
        """From ``CHARTCITE_AUDIT_KEY`` (+ retired), else derived from the token key (+ retired)."""
        if audit_key is not None:
            return cls(
                base64.b64decode(audit_key), [base64.b64decode(k) for k in audit_keys_retired]
            )
        if token_key is None:
            raise ValueError("an audit key or a token key is required")
        return cls(derive_key(token_key), [derive_key(k) for k in token_keys_retired])

    def get(self, kid: str) -> bytes | None:
        return self._keys.get(kid)

    def __repr__(self) -> str:
        return f"AuditKeyring(current={self.current_id!r}, keys={sorted(self._keys)!r})"


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: ``row_count`` audit rows up to ``head_seq``, whose hash is ``head_hash``."""

    row_count: int
    head_seq: int
    head_hash: str
    signed_at: datetime
    key_id: str
    prev_signature: str
    signature: str = ""
    seq: int | None = None

    def message(self) -> bytes:
        """The signed bytes: canonical JSON of everything but ``seq`` and the signature."""
        return json.dumps(
            {
                "v": 1,
                "row_count": self.row_count,
                "head_seq": self.head_seq,
                "head_hash": self.head_hash,
                "signed_at": self.signed_at.astimezone(UTC).isoformat(timespec="microseconds"),
                "key_id": self.key_id,
                "prev_signature": self.prev_signature,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "row_count": self.row_count,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "signed_at": self.signed_at.isoformat(timespec="microseconds"),
            "key_id": self.key_id,
            "prev_signature": self.prev_signature,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        return cls(
            row_count=int(data["row_count"]),
            head_seq=int(data["head_seq"]),
            head_hash=str(data["head_hash"]),
            signed_at=datetime.fromisoformat(str(data["signed_at"])),
            key_id=str(data["key_id"]),
            prev_signature=str(data["prev_signature"]),
            signature=str(data["signature"]),
            seq=None if data.get("seq") is None else int(data["seq"]),
        )


def sign(keyring: AuditKeyring, unsigned: Checkpoint) -> Checkpoint:
    """``unsigned`` with the current key's id and its signature."""
    body = Checkpoint(
        unsigned.row_count,
        unsigned.head_seq,
        unsigned.head_hash,
        unsigned.signed_at,
        keyring.current_id,
        unsigned.prev_signature,
    )
    mac = hmac.new(keyring.current, body.message(), hashlib.sha256).hexdigest()
    return Checkpoint(**{**body.__dict__, "signature": mac})


def signature_ok(keyring: AuditKeyring, cp: Checkpoint) -> str | None:
    """``None`` if the signature verifies, else why not."""
    key = keyring.get(cp.key_id)
    if key is None:
        return f"checkpoint #{cp.seq} is signed with an unknown key {cp.key_id!r}"
    expected = hmac.new(key, cp.message(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, cp.signature):
        return f"checkpoint #{cp.seq}: signature does not verify (a forged or altered checkpoint)"
    return None


@dataclass(frozen=True)
class Problem:
    seq: int | None
    reason: str


@dataclass
class AuditReport:
    """What ``chartcite audit verify`` found: counts, and every problem in order."""

    rows: int = 0
    checkpoints: int = 0
    anchored_rows: int = 0
    last_anchor_seq: int | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unanchored_rows(self) -> int:
        return max(0, self.rows - self.anchored_rows)


def check_checkpoints(keyring: AuditKeyring, checkpoints: list[Checkpoint]) -> list[Problem]:
    """Signatures, links between consecutive checkpoints, and growth (never shrinking)."""
    problems: list[Problem] = []
    prev: Checkpoint | None = None
    for cp in checkpoints:
        bad = signature_ok(keyring, cp)
        if bad:
            problems.append(Problem(cp.head_seq, bad))
        expected_prev = prev.signature if prev is not None else GENESIS
        if cp.prev_signature != expected_prev:
            problems.append(
                Problem(
                    cp.head_seq,
                    f"checkpoint #{cp.seq} does not follow the checkpoint before it "
                    "(a checkpoint was removed or inserted)",
                )
            )
        if prev is not None and (cp.head_seq < prev.head_seq or cp.row_count < prev.row_count):
            problems.append(
                Problem(cp.head_seq, f"checkpoint #{cp.seq} covers less than the one before it")
            )
        prev = cp
    return problems


def check_anchor(
    table: list[Checkpoint], anchor: list[Checkpoint], keyring: AuditKeyring
) -> list[Problem]:
    """Every checkpoint of an exported anchor file must still be in the table, unchanged."""
    problems = [
        Problem(cp.head_seq, f"anchor file: {bad}")
        for cp in anchor
        if (bad := signature_ok(keyring, cp))
    ]
    have = {cp.signature for cp in table}
    for cp in anchor:
        if cp.signature not in have:
            problems.append(
                Problem(
                    cp.head_seq,
                    f"checkpoint #{cp.seq} of the anchor file (seq {cp.head_seq}, "
                    f"{cp.row_count} records) is missing from the database: "
                    "the checkpoint table was truncated or rewritten",
                )
            )
    return problems


class ChainVerifier:
    """Walks the rows in ``seq`` order once: hash links, and each checkpoint at its head row."""

    def __init__(self, checkpoints: list[Checkpoint]) -> None:
        self.report = AuditReport(checkpoints=len(checkpoints))
        self._pending = sorted(checkpoints, key=lambda c: (c.head_seq, c.seq or 0))
        self._prev = GENESIS
        self._broken = False
        self._last_good: Checkpoint | None = None
        self._last_seq = 0

    def _since(self) -> str:
        good = self._last_good
        return f"after seq {good.head_seq} (checkpoint #{good.seq})" if good else "from the start"

    def _check_head(self, cp: Checkpoint, row: Mapping[str, Any] | None, count: int) -> None:
        r = self.report
        if row is None:
            r.problems.append(
                Problem(
                    cp.head_seq,
                    f"checkpoint #{cp.seq} signed {cp.row_count} records up to seq {cp.head_seq}, "
                    f"but record seq {cp.head_seq} is gone (records deleted {self._since()})",
                )
            )
            return
        if count != cp.row_count:
            what = "inserted" if count > cp.row_count else "deleted"
            r.problems.append(
                Problem(
                    cp.head_seq,
                    f"checkpoint #{cp.seq} signed {cp.row_count} records up to seq {cp.head_seq}, "
                    f"the table has {count}: records were {what} {self._since()}",
                )
            )
        elif row["hash"] != cp.head_hash:
            r.problems.append(
                Problem(
                    cp.head_seq,
                    f"record seq {cp.head_seq} has hash {row['hash'][:12]}…, checkpoint #{cp.seq} "
                    f"signed {cp.head_hash[:12]}…: the chain was recomputed after an edit "
                    f"{self._since()}",
                )
            )
        else:
            self._last_good = cp
            r.anchored_rows = cp.row_count
            r.last_anchor_seq = cp.head_seq

    def feed(self, row: Mapping[str, Any]) -> None:
        r = self.report
        seq = int(row["seq"])
        # Checkpoints whose head lies before this row, never met: their head row is gone.
        while self._pending and self._pending[0].head_seq < seq:
            self._check_head(self._pending.pop(0), None, r.rows)
        r.rows += 1
        self._last_seq = seq
        if not self._broken:
            if row["prev_hash"] != self._prev:
                self._broken = True
                r.problems.append(Problem(seq, "prev_hash does not match the previous row"))
            elif chain_hash(self._prev, row_record(row), row["recorded_at"]) != row["hash"]:
                self._broken = True
                r.problems.append(Problem(seq, "row content does not match its hash"))
        self._prev = row["hash"]
        while self._pending and self._pending[0].head_seq == seq:
            self._check_head(self._pending.pop(0), row, r.rows)

    def finish(self) -> AuditReport:
        for cp in self._pending:
            last = f"seq {self._last_seq}" if self.report.rows else "no records at all"
            self.report.problems.append(
                Problem(
                    cp.head_seq,
                    f"checkpoint #{cp.seq} signed {cp.row_count} records up to seq {cp.head_seq}, "
                    f"but the table ends at {last}: the newest records were deleted",
                )
            )
        self._pending = []
        return self.report

    def feed_all(self, rows: Iterable[Mapping[str, Any]]) -> AuditReport:
        for row in rows:
            self.feed(row)
        return self.finish()


def verify_with_checkpoints(
    rows: list[Mapping[str, Any]],
    checkpoints: list[Checkpoint],
    keyring: AuditKeyring,
    anchor: list[Checkpoint] | None = None,
) -> AuditReport:
    """The chain, every checkpoint (and an exported anchor file): all problems, in seq order."""
    ordered = sorted(checkpoints, key=lambda c: c.seq or 0)
    verifier = ChainVerifier(ordered)
    report = verifier.feed_all(rows)
    extra = check_checkpoints(keyring, ordered)
    if anchor:
        extra += check_anchor(ordered, anchor, keyring)
        known = {cp.signature for cp in ordered}
        missing = [cp for cp in anchor if cp.signature not in known]
        if missing:  # the anchored heads are checked against the rows too
            again = ChainVerifier(missing).feed_all(rows)
            extra += again.problems
    report.problems = sorted(report.problems + extra, key=lambda p: p.seq or 0)
    return report
