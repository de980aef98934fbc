"""Sync under faults: what is in Postgres after a faulted run, and after a clean re-run.

A separate demo (own database, 50-resource pages, fast retries) sits behind the sandbox's fault
injector. A clean sync of one patient is the reference; each test wipes that patient's copy, syncs
under one fault, checks the run's status and what was stored, then syncs cleanly and requires the
store to equal the reference exactly (raw versions, facts and their source hashes, chunks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from launch.db import Database, create_engine
from launch.demo_client import launch_patient, sync_patient
from launch.sandbox import Fault, FaultPlan, SandboxStore
from launch.server import BackgroundServer, build_demo, free_port, sandbox_store
from launch.settings import Settings
from smart_app.ehrs import source_key
from tests.conftest import migrated_scratch_database
from tests.integration.helpers import owned

PAGE_2 = r"\$everything.*_offset=50"


@dataclass
class Faulty:
    base_url: str
    store: SandboxStore
    faults: FaultPlan
    database: Database
    source: str
    patient_id: str
    reference: dict[str, Any]
    foreign_url: str
    foreign_hits: list[dict[str, str]]


async def _query(db: Database, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(db, pool_size=1)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return list(result) if result.returns_rows else []
    finally:
        await engine.dispose()


def query(db: Database, sql: str, **params: Any) -> list[Any]:
    return asyncio.run(_query(db, sql, **params))


def snapshot(f: Faulty) -> dict[str, Any]:
    """Everything stored for the patient, as comparable sets."""
    key = {"s": f.source, "p": f.patient_id}
    where = "WHERE source = :s AND patient_id = :p"
    return {
        "resources": set(
            query(
                f.database,
                f"SELECT resource_type, id, content_hash FROM fhir_resource {where}",
                **key,
            )
        ),
        "facts": set(
            query(
                f.database,
                "SELECT resource_type, id, source_hash, indexed_hash, incomplete, display, code, "
                f"value_num, value_text, date FROM clinical_fact {where}",
                **key,
            )
        ),
        "chunks": set(
            query(f.database, f"SELECT id, content_hash, source_hash FROM chunk {where}", **key)
        ),
    }


def wipe(f: Faulty) -> None:
    for table in ("chunk", "clinical_fact", "fhir_resource"):
        query(
            f.database,
            f"DELETE FROM {table} WHERE source = :s AND patient_id = :p",
            s=f.source,
            p=f.patient_id,
        )


def sync(f: Faulty) -> dict[str, Any]:
    client, resp = launch_patient(f.base_url, f.patient_id)
    assert resp.status_code == 200, resp.text[:200]
    with closing(client):
        return sync_patient(client, timeout=120, full=True)


def _foreign_app(hits: list[dict[str, str]]) -> Starlette:
    async def anything(request: Request) -> JSONResponse:
        hits.append(
            {"path": request.url.path, "authorization": request.headers.get("authorization", "")}
        )
        return JSONResponse({"resourceType": "Bundle", "type": "searchset", "entry": []})

    return Starlette(routes=[Route("/{path:path}", anything)])


@pytest.fixture(scope="module")
def faulty(data_dir: Path, database: Database) -> Iterator[Faulty]:
    db = migrated_scratch_database(database, "faults")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        env="dev",
        data_dir=data_dir,
        port=port,
        sync_page_size=50,
        fhir_backoff_seconds=0.05,
        fhir_request_timeout_seconds=1.5,
        fhir_retry_attempts=3,
        fhir_max_retry_after_seconds=5,
        fhir_url_aliases={f"{base}/ehr/fhir": [f"http://localhost:{port}/ehr/fhir"]},
    )
    store = sandbox_store(patients=3)
    built = build_demo(settings, store, database=db)
    server = BackgroundServer(built.app, "127.0.0.1", port)
    server.start()
    hits: list[dict[str, str]] = []
    foreign_port = free_port()
    foreign = BackgroundServer(_foreign_app(hits), "127.0.0.1", foreign_port)  # type: ignore[arg-type]
    foreign.start()
    patient = str(store.patients()[0]["id"])
    f = Faulty(
        base_url=base,
        store=store,
        faults=built.faults,
        database=db,
        source=source_key(f"{base}/ehr/fhir"),
        patient_id=patient,
        reference={},
        foreign_url=f"http://127.0.0.1:{foreign_port}",
        foreign_hits=hits,
    )
    clean = sync(f)
    assert clean["status"] == "done", clean
    f.reference = snapshot(f)
    yield f
    foreign.stop()
    server.stop()


@pytest.fixture
def fresh(faulty: Faulty) -> Iterator[Faulty]:
    """The patient's copy wiped, no faults; afterwards a clean re-run must restore the reference."""
    wipe(faulty)
    faulty.faults.clear()
    faulty.foreign_hits.clear()
    yield faulty
    faulty.faults.clear()


def rerun_matches_reference(f: Faulty) -> None:
    f.faults.clear()
    again = sync(f)
    assert again["status"] == "done", again
    assert_same_as_reference(f)


def assert_same_as_reference(f: Faulty) -> None:
    now = snapshot(f)
    diff = {
        k: {
            "extra": sorted(now[k] - f.reference[k])[:3],
            "missing": sorted(f.reference[k] - now[k])[:3],
        }
        for k in now
        if now[k] != f.reference[k]
    }
    assert not diff, diff


def facts_cover_raw(f: Faulty) -> None:
    """Every stored clinical resource has its fact at its version (nothing stored unprojected)."""
    missing = query(
        f.database,
        """SELECT r.resource_type, r.id FROM fhir_resource r LEFT JOIN clinical_fact c
           ON c.source = r.source AND c.patient_id = r.patient_id
          AND c.resource_type = r.resource_type AND c.id = r.id
           WHERE r.source = :s AND r.patient_id = :p
             AND r.resource_type NOT IN ('Patient', 'Medication', 'Binary')
             AND c.source_hash IS DISTINCT FROM r.content_hash""",
        s=f.source,
        p=f.patient_id,
    )
    assert missing == []


def stored_count(f: Faulty) -> int:
    rows = query(
        f.database,
        "SELECT count(*) FROM fhir_resource WHERE source = :s AND patient_id = :p",
        s=f.source,
        p=f.patient_id,
    )
    return int(rows[0][0])


def test_throttled_page_is_retried_after_retry_after(fresh: Faulty) -> None:
    fresh.faults.set(Fault("status", path=PAGE_2, status=429, retry_after="1", times=2))
    status = sync(fresh)
    assert [k for k, _ in fresh.faults.fired] == ["status", "status"]
    assert status["status"] == "done", status
    assert status["counts"]["http_retries"] >= 2
    assert_same_as_reference(fresh)
    rerun_matches_reference(fresh)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", path=PAGE_2, status=503, times=0),
        Fault("reset", path=PAGE_2, times=0),
        Fault("truncate", path=PAGE_2, times=0),
        Fault("status", path=PAGE_2, status=429, retry_after="3600", times=0),
    ],
    ids=["503-for-ever", "reset-for-ever", "truncated-for-ever", "retry-after-too-long"],
)
def test_page_that_keeps_failing_ends_partial_and_a_clean_rerun_repairs(
    fresh: Faulty, fault: Fault
) -> None:
    fresh.faults.set(fault)
    status = sync(fresh)
    assert fresh.faults.fired, "the fault never fired"
    assert status["status"] == "partial", status
    assert "everything" in status["errors"], status["errors"]
    kept = stored_count(fresh)
    assert 50 <= kept < len(fresh.reference["resources"])  # page 1 kept, the rest missing
    facts_cover_raw(fresh)
    rerun_matches_reference(fresh)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("stall", path=PAGE_2, seconds=3.0, times=1),
        Fault("reset", path=PAGE_2, times=1),
        Fault("truncate", path=PAGE_2, times=1),
        Fault("status", path=PAGE_2, status=502, times=2),
    ],
    ids=["stall", "reset", "truncated", "502-twice"],
)
def test_transient_fault_is_retried_and_the_run_is_whole(fresh: Faulty, fault: Fault) -> None:
    fresh.faults.set(fault)
    status = sync(fresh)
    assert fresh.faults.fired
    assert status["status"] == "done", status
    assert status["counts"]["http_retries"] >= 1
    assert_same_as_reference(fresh)
    rerun_matches_reference(fresh)


def test_expired_token_is_refreshed_once_and_the_sync_goes_on(fresh: Faulty) -> None:
    fresh.faults.set(Fault("token_expired", path=PAGE_2, times=1))
    status = sync(fresh)
    assert fresh.faults.fired
    assert status["status"] == "done", status
    assert status["counts"]["http_refreshes"] == 1
    assert_same_as_reference(fresh)


def test_short_lived_tokens_are_refreshed_during_a_long_sync(fresh: Faulty) -> None:
    """Access tokens of 3 s (the EHR's choice for this launch) and a page that times out twice: the
    sync and the page's polling both refresh (one at a time: refresh tokens rotate) and the copy
    is whole."""
    fresh.faults.set(Fault("stall", path=PAGE_2, seconds=4.0, times=2))  # two timeouts: > 3 s
    client, resp = launch_patient(fresh.base_url, fresh.patient_id, extra={"token_ttl": "3"})
    assert resp.status_code == 200, resp.text[:200]
    with closing(client):
        status = sync_patient(client, timeout=120, full=True)
        assert status["status"] == "done", status
        assert status["counts"]["http_refreshes"] >= 1  # a 401 mid-sync, refreshed, repeated
        assert client.get("/api/context").status_code == 200  # the session outlived many tokens
    assert fresh.faults.fired
    assert_same_as_reference(fresh)


def test_unreadable_note_binaries_make_the_run_partial_until_they_are_read(fresh: Faulty) -> None:
    fresh.faults.set(Fault("status", path=r"/fhir/Binary/", status=503, times=0))
    status = sync(fresh)
    assert fresh.faults.fired
    assert status["status"] == "partial", status
    assert "Binary" in status["errors"] and "DocumentReference" in status["errors"]
    incomplete = query(
        fresh.database,
        "SELECT count(*) FROM clinical_fact WHERE source = :s AND patient_id = :p "
        "AND resource_type = 'DocumentReference' AND incomplete IS NOT NULL AND value_text IS NULL",
        s=fresh.source,
        p=fresh.patient_id,
    )[0][0]
    by_url = [
        d
        for d in owned(fresh.store, fresh.patient_id, "DocumentReference")
        if any("url" in (c.get("attachment") or {}) for c in d["content"])
    ]
    assert incomplete == len(by_url) > 0
    rerun_matches_reference(fresh)


def test_next_link_to_another_host_is_not_followed_and_the_token_stays(fresh: Faulty) -> None:
    fresh.faults.set(Fault("next_host", path=r"\$everything", host=fresh.foreign_url, times=0))
    status = sync(fresh)
    assert fresh.faults.fired
    assert status["status"] == "partial", status
    assert "outside its FHIR base" in status["errors"]["everything"]
    assert fresh.foreign_hits == []
    rerun_matches_reference(fresh)


def test_next_link_that_only_contains_the_base_is_not_followed(fresh: Faulty) -> None:
    # fhirpy's own check (``base in url``) would follow this to the foreign host.
    trick = fresh.foreign_url + "/steal?u={url}"
    fresh.faults.set(Fault("next_host", path=r"\$everything", host=trick, times=0))
    status = sync(fresh)
    assert status["status"] == "partial", status
    assert fresh.foreign_hits == []
    rerun_matches_reference(fresh)


def test_next_link_on_a_configured_alias_is_followed(fresh: Faulty) -> None:
    alias = fresh.base_url.replace("127.0.0.1", "localhost")
    fresh.faults.set(Fault("next_host", path=r"\$everything", host=alias, times=0))
    status = sync(fresh)
    assert fresh.faults.fired
    assert status["status"] == "done", status
    assert_same_as_reference(fresh)


def test_server_without_everything_is_searched_type_by_type(fresh: Faulty) -> None:
    fresh.faults.set(Fault("no_everything", times=0))
    status = sync(fresh)
    assert status["status"] == "done", status
    assert_same_as_reference(fresh)


def test_short_result_set_is_partial_by_bundle_total(fresh: Faulty) -> None:
    fresh.faults.set(Fault("drop_entry", path=PAGE_2, times=0))
    status = sync(fresh)
    assert fresh.faults.fired
    assert status["status"] == "partial", status
    assert (
        "of" in status["errors"]["everything"]
        and "results arrived" in status["errors"]["everything"]
    )
    rerun_matches_reference(fresh)


def test_another_patients_resource_is_quarantined_without_its_content(fresh: Faulty) -> None:
    other = str(fresh.store.patients()[1]["id"])
    intruder = {
        "resourceType": "Observation",
        "id": "intruder-obs",
        "status": "final",
        "code": {"text": "Secret of another patient"},
        "subject": {"reference": f"Patient/{other}"},
        "valueString": "another patient's value",
    }
    fresh.faults.set(Fault("extra_entry", path=r"\$everything", resource=intruder, times=1))
    status = sync(fresh)
    assert status["status"] == "partial" and status["quarantined"] == 1, status
    rows = query(
        fresh.database,
        "SELECT * FROM quarantine WHERE source = :s AND patient_id = :p AND resource_id = 'intruder-obs'",
        s=fresh.source,
        p=fresh.patient_id,
    )
    assert len(rows) == 1
    assert "another patient" not in repr(tuple(rows[0])) and "Secret" not in repr(tuple(rows[0]))
    assert "compartment" in rows[0]._mapping["reason"]
    assert not query(fresh.database, "SELECT 1 FROM fhir_resource WHERE id = 'intruder-obs'")
    rerun_matches_reference(fresh)


def test_resources_deleted_at_the_ehr_are_tombstoned_and_audited(faulty: Faulty) -> None:
    faulty.faults.clear()
    condition = owned(faulty.store, faulty.patient_id, "Condition")[0]
    observation = owned(faulty.store, faulty.patient_id, "Observation")[0]
    try:
        for r in (condition, observation):
            faulty.store.remove(r["resourceType"], r["id"])
        status = sync(faulty)
        assert status["status"] == "done", status
        assert status["counts"]["tombstoned"] == 2
        gone = {("Condition", condition["id"]), ("Observation", observation["id"])}
        now = snapshot(faulty)
        assert not gone & {(t, i) for t, i, _ in now["resources"]}
        assert not gone & {(f[0], f[1]) for f in now["facts"]}
        chunk_refs = query(
            faulty.database,
            "SELECT resource_type, resource_id FROM chunk WHERE source = :s AND patient_id = :p",
            s=faulty.source,
            p=faulty.patient_id,
        )
        assert not gone & {tuple(r) for r in chunk_refs}
        audit = query(
            faulty.database,
            "SELECT detail FROM audit_event WHERE source = :s AND patient_id = :p "
            "AND outcome = 'tombstoned' ORDER BY seq DESC LIMIT 1",
            s=faulty.source,
            p=faulty.patient_id,
        )
        assert set(audit[0][0]["removed"]) == {f"{t}/{i}" for t, i in gone}
    finally:
        faulty.store.add(condition)
        faulty.store.add(observation)
    rerun_matches_reference(faulty)


def test_repair_rebuilds_facts_and_chunks_from_raw_offline(fresh: Faulty) -> None:
    sync(fresh)
    query(
        fresh.database,
        "DELETE FROM clinical_fact WHERE source = :s AND patient_id = :p AND resource_type = 'Condition'",
        s=fresh.source,
        p=fresh.patient_id,
    )
    query(
        fresh.database,
        "DELETE FROM chunk WHERE source = :s AND patient_id = :p AND resource_type = 'DocumentReference'",
        s=fresh.source,
        p=fresh.patient_id,
    )
    query(
        fresh.database,
        "UPDATE clinical_fact SET indexed_hash = source_hash WHERE source = :s AND patient_id = :p",
        s=fresh.source,
        p=fresh.patient_id,
    )
    assert snapshot(fresh) != fresh.reference
    from launch.repair import repair_all

    report = asyncio.run(repair_all(fresh.database, Settings(env="dev")))
    assert report.patients >= 1
    assert_same_as_reference(fresh)


def test_sync_status_lists_errors_per_type_in_the_api(fresh: Faulty) -> None:
    fresh.faults.set(Fault("status", path=r"/fhir/Binary/", status=503, times=0))
    client, _ = launch_patient(fresh.base_url, fresh.patient_id)
    with closing(client):
        status = sync_patient(client, timeout=120, full=True)
        again = client.get(f"/api/sync/{status['id']}").json()
        answer = client.post("/api/ask", json={"question": "What medications?"}).json()
    assert again["errors"] == status["errors"] and set(again["errors"]) >= {"Binary"}
    notices = [s["text"] for s in answer["statements"] if s["kind"] == "notice"]
    assert any("incomplete" in n and "Binary" in n for n in notices), notices
    assert any(s["kind"] == "fact" for s in answer["statements"])  # still answers what it has
    assert again["answerable_at"] is not None and again["heartbeat_at"] is not None
    rerun_matches_reference(fresh)


def test_foreign_listener_is_reachable(faulty: Faulty) -> None:
    """The foreign-host tests mean something only if that host would have answered."""
    r = httpx2.get(faulty.foreign_url + "/probe")
    assert r.status_code == 200 and faulty.foreign_hits[-1]["path"] == "/probe"
    faulty.foreign_hits.clear()


def test_tokens_that_expire_in_seconds_are_refreshed_mid_sync(
    data_dir: Path, database: Database
) -> None:
    """A sandbox whose access tokens live 2 s, and pages slowed so the sync outlives one."""
    db = migrated_scratch_database(database, "ttl")
    port = free_port()
    settings = Settings(env="dev", data_dir=data_dir, port=port, sync_page_size=50)
    store = sandbox_store(patients=1)
    built = build_demo(settings, store, database=db, token_ttl=2)
    built.faults.set(Fault("stall", path=r"\$everything", seconds=0.8, times=0))
    server = BackgroundServer(built.app, "127.0.0.1", port)
    server.start()
    try:
        pid = str(store.patients()[0]["id"])
        client, resp = launch_patient(f"http://127.0.0.1:{port}", pid)
        with closing(client):
            assert resp.status_code == 200
            status = sync_patient(client, timeout=120, full=True)
        assert status["status"] == "done", status
        assert status["counts"]["http_refreshes"] >= 1  # a real 401 for an expired token
        expected = len(store.everything(pid))
        assert sum(v for k, v in status["counts"].items() if k[:1].isupper()) >= expected
    finally:
        server.stop()
