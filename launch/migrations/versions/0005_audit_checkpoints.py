"""Audit checkpoints: the chain's head, signed, kept outside the audit rows.

- ``audit_checkpoint``: one row per checkpoint — ``row_count`` (audit rows with ``seq <= head_seq``),
  ``head_seq`` and ``head_hash`` (the newest row it covers), ``signed_at``, ``key_id`` and an
  HMAC-SHA256 ``signature`` over those fields and ``prev_signature`` (the previous checkpoint's
  signature, so checkpoints form a chain of their own). The signing key never enters the database
  (``smart_app/audit_anchor.py``). Append-only, like ``audit_event``.

The trigger function names the table it guards; ``audit_event`` keeps its own (0001).
The app's least-privilege role and its grants are applied after every upgrade by ``launch.db``.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"

STATEMENTS = [
    """CREATE TABLE audit_checkpoint (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    row_count bigint NOT NULL, head_seq bigint NOT NULL, head_hash text NOT NULL,
    signed_at timestamptz NOT NULL, key_id text NOT NULL, prev_signature text NOT NULL,
    signature text NOT NULL UNIQUE
)""",
    """CREATE FUNCTION audit_checkpoint_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$""",
    """CREATE TRIGGER audit_checkpoint_no_update BEFORE UPDATE OR DELETE ON audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_append_only()""",
    """CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoint_append_only()""",
]


def upgrade() -> None:
    bind = op.get_bind()
    for statement in STATEMENTS:
        bind.exec_driver_sql(statement)
