"""The running app's share of the sync queue: a job someone else queued is claimed by its poll,
and a job whose session is gone ends ``failed`` (nobody can read the chart with it), audited."""

from __future__ import annotations

import time
import uuid

from smart_app.ehrs import source_key
from tests.conftest import RunningDemo
from tests.integration.test_sync_faults import query


def test_a_queued_job_whose_session_ended_is_failed_and_audited(demo: RunningDemo) -> None:
    job = uuid.uuid4()
    key = {
        "i": job,
        "s": source_key(f"{demo.base_url}/ehr/fhir"),
        "p": str(demo.store.patients()[-1]["id"]),
    }
    # Queued by "another worker" for a session that has since ended (no app_session row).
    query(
        demo.database,
        "INSERT INTO sync_run (source, patient_id, id, status, phase, counts, quarantined, "
        "errors, mode, types, started_at, heartbeat_at) VALUES (:s, :p, :i, 'running', "
        "'queued', '{}', 0, '{}', 'full', '[]', now(), now())",
        **key,
    )
    query(
        demo.database,
        "INSERT INTO sync_job (id, source, patient_id, session_hash, mode, created_at, attempts, "
        "locked) VALUES (:i, :s, :p, :h, 'full', now(), 0, false)",
        h="0" * 64,
        **key,
    )
    deadline = time.monotonic() + 30  # the app polls every CHARTCITE_SYNC_POLL_SECONDS (2 s)
    while (run := query(demo.database, "SELECT status, error FROM sync_run WHERE id = :i", i=job))[
        0
    ][0] == "running":
        assert time.monotonic() < deadline, "no worker claimed the queued job"
        time.sleep(0.2)
    status, error = run[0]
    assert status == "failed" and "launch chartcite again" in error, run
    (state,) = query(
        demo.database, "SELECT attempts, finished_at IS NOT NULL FROM sync_job WHERE id = :i", i=job
    )
    assert tuple(state) == (1, True)
    audit = query(
        demo.database,
        "SELECT outcome, detail->>'reason' FROM audit_event "
        "WHERE action = 'sync' AND detail->>'sync_id' = :i",
        i=str(job),
    )
    assert [tuple(a) for a in audit] == [("failed", "session_expired")]
