"""Sync integrity: derived rows record the raw version they came from; runs have leases and errors.

- ``clinical_fact.source_hash``: content hash of the raw resource (and what it depends on, such as
  a referenced Medication or a note's Binary) the fact was projected from; ``incomplete`` says why a
  fact is known to lack something (note text unreadable, Medication not readable), so the next sync
  retries it; ``indexed_hash`` is the ``source_hash`` its chunks were built from.
- ``chunk.source_hash``: the same hash, on every chunk, as provenance.
- ``sync_run``: ``heartbeat_at`` (a live run beats every few seconds; a run whose lease ran out is
  closed ``failed``), ``errors`` (per resource type), ``answerable_at`` (structured facts stored),
  ``mode`` (full or incremental), ``types`` (the resource types the run could read: an incremental
  run needs a previous complete run that covered at least as many).
- ``quarantine.content`` is dropped: a quarantined resource may belong to another patient, so only its
  type, id and the reason are kept.

Existing facts get no ``source_hash``, so the next sync of each patient re-projects and re-indexes it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"

STATEMENTS = [
    "ALTER TABLE clinical_fact ADD COLUMN source_hash text",
    "ALTER TABLE clinical_fact ADD COLUMN indexed_hash text",
    "ALTER TABLE clinical_fact ADD COLUMN incomplete text",
    "ALTER TABLE chunk ADD COLUMN source_hash text",
    "ALTER TABLE sync_run ADD COLUMN heartbeat_at timestamptz",
    "ALTER TABLE sync_run ADD COLUMN answerable_at timestamptz",
    "ALTER TABLE sync_run ADD COLUMN errors jsonb NOT NULL DEFAULT '{}'::jsonb",
    "ALTER TABLE sync_run ADD COLUMN mode text NOT NULL DEFAULT 'full'",
    "ALTER TABLE sync_run ADD COLUMN types jsonb NOT NULL DEFAULT '[]'::jsonb",
    "UPDATE sync_run SET heartbeat_at = coalesce(finished_at, started_at)",
    "CREATE INDEX sync_run_live ON sync_run (status, heartbeat_at) WHERE status = 'running'",
    "ALTER TABLE quarantine DROP COLUMN content",
]


def upgrade() -> None:
    bind = op.get_bind()
    for statement in STATEMENTS:
        bind.exec_driver_sql(statement)
