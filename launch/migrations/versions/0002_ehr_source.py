"""A patient is (EHR source, patient id): every patient-scoped table gets ``source`` in its key.

Two registered EHRs may both have ``Patient/123``; keyed by the bare id their rows met (another
hospital's chart under this patient's banner). ``source`` is the registered EHR's stable key.

The chart copies (raw resources, facts, chunks, quarantine, sync runs) and open sessions were made
without knowing their EHR, so they are dropped: the next launch signs in again and re-syncs. Stored
answers are kept under the source ``legacy`` (readable by no session, never shown as another EHR's).
Audit rows are kept unchanged; new rows record their source (NULL in old rows keeps their hashes).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"

STATEMENTS = [
    # Caches of the EHR and open sessions: re-pulled / re-launched.
    "DELETE FROM chunk",
    "DELETE FROM clinical_fact",
    "DELETE FROM fhir_resource",
    "DELETE FROM quarantine",
    "DELETE FROM sync_run",
    "DELETE FROM app_session",
    "DELETE FROM launch_state",
    # fhir_resource, clinical_fact, chunk: (source, patient_id, …) keys.
    "ALTER TABLE fhir_resource ADD COLUMN source text NOT NULL",
    "ALTER TABLE fhir_resource DROP CONSTRAINT fhir_resource_pkey",
    "ALTER TABLE fhir_resource ADD PRIMARY KEY (source, patient_id, resource_type, id)",
    "ALTER TABLE clinical_fact ADD COLUMN source text NOT NULL",
    "ALTER TABLE clinical_fact DROP CONSTRAINT clinical_fact_pkey",
    "ALTER TABLE clinical_fact ADD PRIMARY KEY (source, patient_id, resource_type, id)",
    "DROP INDEX clinical_fact_code",
    "CREATE INDEX clinical_fact_code ON clinical_fact (source, patient_id, resource_type, code, date)",
    "ALTER TABLE chunk ADD COLUMN source text NOT NULL",
    "ALTER TABLE chunk DROP CONSTRAINT chunk_pkey",
    "ALTER TABLE chunk ADD PRIMARY KEY (source, patient_id, id)",
    "DROP INDEX chunk_resource",
    "CREATE INDEX chunk_resource ON chunk (source, patient_id, resource_type, resource_id)",
    # sync_run, quarantine, answer: the patient key leads their primary key too (Citus-ready).
    "ALTER TABLE sync_run ADD COLUMN source text NOT NULL",
    "ALTER TABLE sync_run DROP CONSTRAINT sync_run_pkey",
    "ALTER TABLE sync_run ADD PRIMARY KEY (source, patient_id, id)",
    "DROP INDEX sync_run_patient",
    "CREATE INDEX sync_run_patient ON sync_run (source, patient_id, started_at)",
    "ALTER TABLE quarantine ADD COLUMN source text NOT NULL",
    "ALTER TABLE quarantine DROP CONSTRAINT quarantine_pkey",
    "ALTER TABLE quarantine ADD PRIMARY KEY (source, patient_id, seq)",
    "DROP INDEX quarantine_patient",
    "ALTER TABLE answer ADD COLUMN source text NOT NULL DEFAULT 'legacy'",
    "ALTER TABLE answer ALTER COLUMN source DROP DEFAULT",
    "ALTER TABLE answer DROP CONSTRAINT answer_pkey",
    "ALTER TABLE answer ADD PRIMARY KEY (source, patient_id, id)",
    "DROP INDEX answer_patient",
    # Sessions and launch state know their EHR.
    "ALTER TABLE app_session ADD COLUMN source text NOT NULL",
    "ALTER TABLE launch_state ADD COLUMN source text NOT NULL",
    # Audit: new rows carry their source; reads filter on (source, patient_id).
    "ALTER TABLE audit_event ADD COLUMN source text",
    "DROP INDEX audit_event_patient",
    "CREATE INDEX audit_event_patient ON audit_event (source, patient_id, seq)",
]


def upgrade() -> None:
    bind = op.get_bind()
    for statement in STATEMENTS:
        bind.exec_driver_sql(statement)
