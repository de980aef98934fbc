"""Stateless workers: a sync job queue, shared rate-limit windows, agent events keyed per patient.

- ``sync_job``: one row per sync run (same id), the work any app process may do. A worker claims
  an open job with ``SELECT … FOR UPDATE SKIP LOCKED``, sets ``lease_owner`` / ``lease_until`` and
  bumps ``attempts``; it extends the lease while it runs and every write it makes is fenced on
  (owner, attempt). ``locked``: the owner also holds the job's session advisory lock, so a dead
  owner (its connection gone) is noticed before the lease runs out. ``session_hash`` names the
  app session whose (encrypted) EHR token the sync reads with; ``mode`` / ``since`` are the plan
  made when the run was queued, so a resumed run repeats the same pull.
- ``rate_window``: request counts per limiter key and minute, shared by every app process
  (UNLOGGED: counters need no crash safety, and are not replicated).
- ``agent_event``: ``audit_hash`` unique per (source, patient) instead of globally, so that the
  unique constraint holds the distribution column (Citus: ``chartcite db upgrade --citus``).

Runs left ``running`` by an older version have no job; ``close_dead_runs`` closes them once their
heartbeat is older than the lease.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"

STATEMENTS = [
    """CREATE TABLE sync_job (
    id uuid PRIMARY KEY,
    source text NOT NULL, patient_id text NOT NULL,
    session_hash text NOT NULL, mode text NOT NULL, since timestamptz,
    created_at timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    lease_owner text, lease_until timestamptz, locked boolean NOT NULL DEFAULT false,
    finished_at timestamptz
)""",
    "CREATE INDEX sync_job_open ON sync_job (created_at) WHERE finished_at IS NULL",
    """CREATE UNLOGGED TABLE rate_window (
    key text NOT NULL, window_start timestamptz NOT NULL, hits integer NOT NULL,
    PRIMARY KEY (key, window_start)
)""",
    "ALTER TABLE agent_event DROP CONSTRAINT agent_event_audit_hash_key",
    """ALTER TABLE agent_event
    ADD CONSTRAINT agent_event_audit_hash UNIQUE (source, patient_id, audit_hash)""",
]


def upgrade() -> None:
    bind = op.get_bind()
    for statement in STATEMENTS:
        bind.exec_driver_sql(statement)
