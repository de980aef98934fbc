"""SMART v2 granular scopes through HTTP: ``patient/Observation.rs?category=…|laboratory``.

A session granted only lab results syncs, stores and answers with exactly the patient's lab
Observations: no vital sign is stored by its sync, none is readable, cited, counted or re-read,
even after a full-scope session of the same patient has stored them (the store is shared per
patient; the read side hides them). Its own demo and database, so what a narrow-only sync leaves in
Postgres can be checked row by row.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest

from fhir_adapters import AccessFilter
from launch.db import Database, create_engine
from launch.demo_client import ask, launch_patient, sync_patient
from launch.sandbox import Fault, FaultPlan, SandboxStore
from launch.server import BackgroundServer, build_demo, free_port, sandbox_store
from launch.settings import Settings
from rag import hybrid_search
from rag.concepts import similar_concepts
from smart_app.ehrs import source_key
from tests.conftest import migrated_scratch_database
from tests.integration.helpers import HBA1C, codes, hba1c_patient, owned
from tests.integration.test_sync_faults import query

OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
LABS_ONLY = f"launch openid fhirUser patient/Observation.rs?category={OBS_CAT}|laboratory"
BP = "85354-9"


@dataclass
class Granular:
    base_url: str
    store: SandboxStore
    faults: FaultPlan
    database: Database
    source: str
    patient_id: str

    def observations(self, category: str | None = None) -> set[str]:
        return {
            o["id"]
            for o in owned(self.store, self.patient_id, "Observation")
            if category is None or category in _categories(o)
        }


def _categories(resource: dict[str, Any]) -> set[str]:
    return {
        c.get("code")
        for cc in resource.get("category") or []
        for c in cc.get("coding") or []
        if c.get("system") == OBS_CAT
    }


def stored(g: Granular, table: str, column: str = "id") -> set[tuple[str, str]]:
    rows = query(
        g.database,
        f"SELECT resource_type, {column} FROM {table} WHERE source = :s AND patient_id = :p",
        s=g.source,
        p=g.patient_id,
    )
    return {(r[0], r[1]) for r in rows}


def wipe(g: Granular) -> None:
    for table in ("chunk", "clinical_fact", "fhir_resource", "sync_run"):
        query(
            g.database,
            f"DELETE FROM {table} WHERE source = :s AND patient_id = :p",
            s=g.source,
            p=g.patient_id,
        )


@pytest.fixture(scope="module")
def granular(data_dir: Path, database: Database) -> Iterator[Granular]:
    db = migrated_scratch_database(database, "granular")
    port = free_port()
    settings = Settings(env="dev", data_dir=data_dir, port=port)
    store = sandbox_store(patients=3)
    built = build_demo(settings, store, database=db)
    server = BackgroundServer(built.app, "127.0.0.1", port)
    server.start()
    base = f"http://127.0.0.1:{port}"
    yield Granular(
        base_url=base,
        store=store,
        faults=built.faults,
        database=db,
        source=source_key(f"{base}/ehr/fhir"),
        patient_id=hba1c_patient(store),
    )
    server.stop()


def session(g: Granular, scope: str | None = None) -> httpx2.Client:
    client, resp = launch_patient(g.base_url, g.patient_id, scope=scope)
    assert resp.status_code == 200, resp.text[:300]
    return client


def _cited(answer: dict[str, Any]) -> set[str]:
    return {c.split("/", 1)[1] for s in answer["statements"] for c in s["citations"]}


def assert_labs_only_stored(g: Granular) -> None:
    labs = g.observations("laboratory")
    want = {("Observation", i) for i in labs}
    assert stored(g, "fhir_resource") == want
    assert stored(g, "clinical_fact") == want
    chunks = stored(g, "chunk", "resource_id")
    assert chunks and chunks <= want


def test_narrow_only_sync_stores_exactly_the_labs(granular: Granular) -> None:
    wipe(granular)
    labs, everything = granular.observations("laboratory"), granular.observations()
    assert labs and everything - labs, "the patient needs labs and other observations"
    with closing(session(granular, LABS_ONLY)) as narrow:
        ctx = narrow.get("/api/context").json()
        assert ctx["readable_types"] == ["Observation"]
        status = sync_patient(narrow, full=True)
    assert status["status"] == "done", status
    assert {k for k in status["counts"] if k[:1].isupper()} == {"Observation"}
    assert status["counts"]["Observation"] == len(labs)
    # $everything ignores categories: the other Observations arrived and were dropped unstored.
    assert status["counts"]["skipped"] == len(everything - labs)
    assert_labs_only_stored(granular)


def test_narrow_search_asks_the_ehr_for_the_category(granular: Granular) -> None:
    wipe(granular)
    granular.faults.set(Fault("no_everything", times=0))
    try:
        with closing(session(granular, LABS_ONLY)) as narrow:
            status = sync_patient(narrow, full=True)
    finally:
        granular.faults.clear()
    assert status["status"] == "done", status
    assert status["counts"]["Observation"] == len(granular.observations("laboratory"))
    # The sandbox honours ``category=system|code``: nothing else came back to be dropped.
    assert status["counts"].get("skipped", 0) == 0
    assert_labs_only_stored(granular)


@pytest.fixture(scope="module")
def both(granular: Granular) -> Iterator[tuple[httpx2.Client, httpx2.Client, dict[str, Any]]]:
    """A narrow-only sync, then a full-scope session's sync of the same patient (its plain
    incremental request must still pull everything: the narrow run covered only labs)."""
    wipe(granular)
    narrow = session(granular, LABS_ONLY)
    assert sync_patient(narrow, full=True)["status"] == "done"
    full = session(granular)
    status = sync_patient(full)
    assert status["status"] == "done", status
    yield narrow, full, status
    narrow.close()
    full.close()


def test_a_full_session_after_a_narrow_one_pulls_everything(
    granular: Granular, both: tuple[httpx2.Client, httpx2.Client, dict[str, Any]]
) -> None:
    _, _, status = both
    assert status["mode"] == "full"
    assert {i for t, i in stored(granular, "fhir_resource") if t == "Observation"} == (
        granular.observations()
    )


def test_narrow_answers_cite_labs_never_vitals(
    granular: Granular, both: tuple[httpx2.Client, httpx2.Client, dict[str, Any]]
) -> None:
    narrow, full, _ = both
    vitals = granular.observations("vital-signs")
    a1c = {
        o["id"]
        for o in owned(granular.store, granular.patient_id, "Observation")
        if HBA1C in codes(o)
    }
    bp = {
        o["id"] for o in owned(granular.store, granular.patient_id, "Observation") if BP in codes(o)
    }
    assert a1c and bp and bp <= vitals

    wide_bp = ask(full, "bp?").json()
    assert _cited(wide_bp) & bp, "the full session sees the blood pressures"

    answer = ask(narrow, "bp?").json()
    body = json.dumps(answer)
    assert not _cited(answer) & vitals
    assert not any(i in body for i in vitals)
    assert not [s for s in answer["statements"] if s["kind"] == "fact"], answer["statements"]
    assert [s for s in answer["statements"] if s["kind"] == "notice"]

    for question in ("vital signs", "latest weight and temperature", "all observations"):
        assert not _cited(ask(narrow, question).json()) & vitals, question

    labs = ask(narrow, "a1c?").json()
    assert _cited(labs) and _cited(labs) <= a1c
    assert _cited(labs) == _cited(ask(full, "a1c?").json())  # the same answer as a full session
    assert _cited(ask(narrow, "hemoglobin a1c values").json()) == a1c

    # The full session's answer cites vital signs: not re-readable by the narrow session.
    assert narrow.get(f"/api/answers/{wide_bp['answer_id']}").status_code == 404
    assert full.get(f"/api/answers/{wide_bp['answer_id']}").status_code == 200
    assert narrow.get(f"/api/answers/{labs['answer_id']}").status_code == 200


def test_narrow_session_cannot_read_a_vital_sign(
    granular: Granular, both: tuple[httpx2.Client, httpx2.Client, dict[str, Any]]
) -> None:
    narrow, full, _ = both
    vital = min(granular.observations("vital-signs"))
    lab = min(granular.observations("laboratory"))
    r = narrow.get(f"/api/resources/Observation/{vital}")
    assert r.status_code in (403, 404), r.text
    assert vital not in r.text
    assert narrow.get(f"/api/resources/Observation/{lab}").status_code == 200
    assert full.get(f"/api/resources/Observation/{vital}").status_code == 200


def test_narrow_sync_after_a_full_one_counts_and_removes_only_labs(
    granular: Granular, both: tuple[httpx2.Client, httpx2.Client, dict[str, Any]]
) -> None:
    narrow, _, full_status = both
    # The full session's run counted every Observation: the narrow session does not see that count.
    seen = narrow.get(f"/api/sync/{full_status['id']}").json()
    assert "Observation" not in seen["counts"], seen["counts"]
    assert full_status["counts"]["Observation"] == len(granular.observations())

    status = sync_patient(narrow, full=True)
    assert status["status"] == "done", status
    assert status["counts"]["Observation"] == len(granular.observations("laboratory"))
    # Its complete pull removed nothing the full session stored (vitals are not its to remove).
    assert status["counts"].get("tombstoned", 0) == 0
    assert {i for t, i in stored(granular, "fhir_resource") if t == "Observation"} == (
        granular.observations()
    )
    ctx = narrow.get("/api/context").json()
    assert ctx["last_sync"]["counts"]["Observation"] == len(granular.observations("laboratory"))


def test_retrieval_sql_hides_vital_chunks_and_concepts(
    granular: Granular, both: tuple[httpx2.Client, httpx2.Client, dict[str, Any]]
) -> None:
    """Hybrid retrieval and concept similarity over the shared chunks: the narrow filter's SQL
    returns lab chunks only, while the full filter finds the vital signs' chunks."""
    full = AccessFilter(granular.source, granular.patient_id, frozenset({"Observation"}))
    narrow = AccessFilter(
        granular.source,
        granular.patient_id,
        frozenset({"Observation"}),
        {"Observation": frozenset({(OBS_CAT, "laboratory")})},
    )
    vitals, labs = granular.observations("vital-signs"), granular.observations("laboratory")
    qvec = np.ones(384, dtype=np.float32) / np.sqrt(384)

    async def run(access: AccessFilter) -> tuple[set[str], set[str]]:
        engine = create_engine(granular.database, pool_size=1)
        try:
            async with engine.connect() as conn:
                hits = await hybrid_search(
                    conn, access, query_vector=qvec, terms=["blood", "pressure"], k=500, n=500
                )
                concepts = await similar_concepts(
                    conn, access, qvec, ["Observation"], threshold=-2.0, limit=1000
                )
        finally:
            await engine.dispose()
        return {h.resource_id for h in hits}, {t for t, _ in concepts}

    wide_hits, wide_concepts = asyncio.run(run(full))
    narrow_hits, narrow_concepts = asyncio.run(run(narrow))
    assert wide_hits & vitals
    assert narrow_hits and narrow_hits <= labs
    assert narrow_concepts < wide_concepts
    assert not any("blood pressure" in c.lower() for c in narrow_concepts), narrow_concepts


def test_narrow_audit_names_no_vital_sign(
    granular: Granular, both: tuple[httpx2.Client, httpx2.Client, dict[str, Any]]
) -> None:
    """The full session reads and cites vital signs; the narrow session's audit view of the same
    patient names none of them (neither in JSON nor in the FHIR AuditEvent export), yet keeps
    the records and the labs."""
    narrow, full, _ = both
    vitals = granular.observations("vital-signs")
    vital = min(vitals)
    assert full.get(f"/api/resources/Observation/{vital}").status_code == 200
    assert _cited(ask(full, "bp?").json()) & vitals
    assert _cited(ask(narrow, "a1c?").json())
    wide = json.dumps(full.get("/api/audit").json())
    assert any(f"Observation/{v}" in wide for v in vitals)
    for view in (narrow.get("/api/audit").json(), narrow.get("/api/audit?format=fhir").json()):
        body = json.dumps(view)
        assert not any(f"Observation/{v}" in body for v in vitals)
    entries = narrow.get("/api/audit").json()["entries"]
    assert any(e["action"] == "ask" for e in entries)
