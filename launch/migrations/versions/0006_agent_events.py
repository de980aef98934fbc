"""Agent events: what agents concluded about a patient, shared with the other agents.

- ``agent_event``: keyed by (EHR source, patient, id) like every patient-scoped table, with a
  btree on (source, patient_id, created_at) for the per-patient listing; the agent, the event
  type, an optional encounter, the JSON payload (size-limited and checked by
  ``smart_app/agent_events.py``) and its SHA-256, the answer ids and resource references it rests
  on, who recorded it (fhirUser, client id) and ``audit_hash``: the hash of the audit row that
  recorded it (the event is a link of the audit chain). Append-only, like ``audit_event``.

The app's least-privilege role gets SELECT/INSERT only (``launch.db.APPEND_ONLY_TABLES``).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"

STATEMENTS = [
    """CREATE TABLE agent_event (
    source text NOT NULL, patient_id text NOT NULL, id text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    encounter_id text, agent text NOT NULL, event_type text NOT NULL,
    payload jsonb NOT NULL, payload_sha256 text NOT NULL,
    answer_ids text[] NOT NULL DEFAULT '{}', refs text[] NOT NULL DEFAULT '{}',
    actor text, client_id text NOT NULL, created_at timestamptz NOT NULL,
    audit_hash text NOT NULL UNIQUE,
    PRIMARY KEY (source, patient_id, id)
)""",
    "CREATE INDEX agent_event_patient ON agent_event (source, patient_id, created_at)",
    """CREATE FUNCTION agent_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$""",
    """CREATE TRIGGER agent_event_no_update BEFORE UPDATE OR DELETE ON agent_event
    FOR EACH ROW EXECUTE FUNCTION agent_event_append_only()""",
    """CREATE TRIGGER agent_event_no_truncate BEFORE TRUNCATE ON agent_event
    FOR EACH STATEMENT EXECUTE FUNCTION agent_event_append_only()""",
]


def upgrade() -> None:
    bind = op.get_bind()
    for statement in STATEMENTS:
        bind.exec_driver_sql(statement)
