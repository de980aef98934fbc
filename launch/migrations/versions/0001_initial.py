"""Initial schema: FHIR store, index, answers, launch state, sessions, append-only audit chain.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE fhir_resource (
    patient_id text NOT NULL, resource_type text NOT NULL, id text NOT NULL,
    version_id text, last_updated timestamptz, content_hash text NOT NULL,
    content jsonb NOT NULL, synced_at timestamptz NOT NULL,
    PRIMARY KEY (patient_id, resource_type, id)
);

CREATE TABLE clinical_fact (
    patient_id text NOT NULL, resource_type text NOT NULL, id text NOT NULL,
    category text, code_system text, code text, display text, status text,
    date timestamptz, end_date timestamptz, value_num double precision, value_text text, unit text,
    encounter_id text, detail jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (patient_id, resource_type, id)
);
CREATE INDEX clinical_fact_code ON clinical_fact (patient_id, resource_type, code, date);

CREATE TABLE sync_run (
    id uuid PRIMARY KEY, patient_id text NOT NULL, session_id text, status text NOT NULL,
    phase text NOT NULL, counts jsonb NOT NULL, quarantined integer NOT NULL DEFAULT 0, error text,
    started_at timestamptz NOT NULL, finished_at timestamptz
);
CREATE INDEX sync_run_patient ON sync_run (patient_id);

CREATE TABLE quarantine (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, patient_id text NOT NULL,
    sync_id uuid NOT NULL, resource_type text, resource_id text, reason text NOT NULL,
    content jsonb NOT NULL, created_at timestamptz NOT NULL
);
CREATE INDEX quarantine_patient ON quarantine (patient_id);

CREATE TABLE concept (
    id text PRIMARY KEY, text text NOT NULL, model_id text NOT NULL, embedding vector(384) NOT NULL
);

CREATE TABLE chunk (
    patient_id text NOT NULL, id text NOT NULL, resource_type text NOT NULL,
    resource_id text NOT NULL, encounter_id text, date timestamptz, kind text NOT NULL,
    text text NOT NULL, content_hash text NOT NULL, concept_id text REFERENCES concept (id),
    embedding vector(384),
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    PRIMARY KEY (patient_id, id),
    CHECK (concept_id IS NOT NULL OR embedding IS NOT NULL)
);
CREATE INDEX chunk_resource ON chunk (patient_id, resource_type, resource_id);

CREATE TABLE answer (
    id uuid PRIMARY KEY, patient_id text NOT NULL, created_at timestamptz NOT NULL,
    body jsonb NOT NULL
);
CREATE INDEX answer_patient ON answer (patient_id);

CREATE TABLE launch_state (
    state_hash text PRIMARY KEY, iss text NOT NULL, launch text, code_verifier_enc bytea NOT NULL,
    nonce text NOT NULL, requested_scope text NOT NULL, created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL, used_at timestamptz
);

CREATE TABLE app_session (
    id_hash text PRIMARY KEY, iss text NOT NULL, client_id text NOT NULL, patient_id text,
    encounter_id text, fhir_user text, granted_scope text NOT NULL,
    access_token_enc bytea NOT NULL, refresh_token_enc bytea, token_expires_at timestamptz,
    need_patient_banner boolean NOT NULL DEFAULT true, smart_style_url text,
    created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL
);

CREATE TABLE audit_event (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, recorded_at timestamptz NOT NULL,
    action text NOT NULL, outcome text NOT NULL, actor text, client_id text, patient_id text,
    detail jsonb NOT NULL, prev_hash text NOT NULL, hash text NOT NULL UNIQUE
);
CREATE INDEX audit_event_patient ON audit_event (patient_id);

-- The audit trail is append-only: the database itself refuses UPDATE, DELETE and TRUNCATE.
CREATE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_event is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_event_no_update BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only();
"""


def _statements(script: str) -> list[str]:
    """Split on top-level semicolons (``$$`` bodies kept whole): asyncpg prepares one at a time."""
    out: list[str] = []
    buf: list[str] = []
    in_body = False
    for line in script.splitlines():
        if line.lstrip().startswith("--") and not in_body:
            continue
        buf.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if not in_body and line.rstrip().endswith(";"):
            out.append("\n".join(buf).strip().rstrip(";"))
            buf = []
    return [s for s in out if s]


def upgrade() -> None:
    bind = op.get_bind()
    for statement in _statements(SCHEMA):
        bind.exec_driver_sql(statement)
