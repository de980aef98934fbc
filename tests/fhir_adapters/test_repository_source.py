"""A patient is (EHR source, patient id): two EHRs' ``Patient/123`` never meet in the store."""

from __future__ import annotations

import asyncio

import pytest

from fhir_adapters import AccessFilter, existing_refs, get_resource, get_resources, list_facts
from fhir_adapters import repository as repo
from fhir_adapters.normalize import content_hash, project
from launch.db import Database, create_engine, upgrade
from tests.conftest import scratch_database

TYPES = frozenset({"Patient", "Condition"})


def _condition(cid: str, text: str) -> dict[str, object]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/123"},
        "code": {"text": text},
        "clinicalStatus": {"coding": [{"code": "active"}]},
    }


def test_access_filter_needs_source_and_patient() -> None:
    with pytest.raises(ValueError, match="source"):
        AccessFilter("", "123", TYPES)
    with pytest.raises(ValueError, match="patient"):
        AccessFilter("ehr-a", "", TYPES)
    assert "123" not in repr(AccessFilter("ehr-a", "123", TYPES))


def test_two_ehrs_with_the_same_patient_id_never_meet(database: Database) -> None:
    db = scratch_database(database, "source")
    a = AccessFilter("ehr-a", "123", TYPES)
    b = AccessFilter("ehr-b", "123", TYPES)

    async def run() -> None:
        engine = create_engine(db, pool_size=1)
        await upgrade(engine)
        try:
            async with engine.begin() as conn:
                for access, text, cid in ((a, "Asthma", "c1"), (b, "Gout", "c1")):
                    res = _condition(cid, text)
                    await repo.store_resources(conn, access, [(res, content_hash(res))])
                    fact = project(res)
                    assert fact is not None
                    await repo.store_facts(conn, access, [fact])
                only_b = _condition("c2", "Psoriasis")
                await repo.store_resources(conn, b, [(only_b, content_hash(only_b))])
            async with engine.connect() as conn:
                got_a = await get_resource(conn, a, "Condition", "c1")
                got_b = await get_resource(conn, b, "Condition", "c1")
                assert got_a is not None and got_a["code"]["text"] == "Asthma"
                assert got_b is not None and got_b["code"]["text"] == "Gout"
                assert [r["id"] for r in await get_resources(conn, a, "Condition")] == ["c1"]
                assert await get_resource(conn, a, "Condition", "c2") is None
                assert await existing_refs(conn, a, [("Condition", "c2")]) == set()
                facts_a = await list_facts(conn, a, "Condition")
                assert [f["display"] for f in facts_a] == ["Asthma"]
        finally:
            await engine.dispose()

    asyncio.run(run())
