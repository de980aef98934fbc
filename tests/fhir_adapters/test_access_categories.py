"""Category-restricted access (SMART v2 ``?category=``): the SQL predicate on every read path.

Rows stored for the patient by a broader session stay in the store; a filter restricted to a
category never shows the others: resources, facts, fact codes, refs, stale/unindexed work, chart
health, tombstones and sync-run counts (real Postgres).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fhir_adapters import AccessFilter, existing_refs, fact_codes, get_resource, list_facts
from fhir_adapters import repository as repo
from fhir_adapters.access import category_matches
from fhir_adapters.normalize import content_hash, project
from launch.db import Database, create_engine, upgrade
from tests.conftest import scratch_database

OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
TYPES = frozenset({"Observation", "Condition", "AllergyIntolerance", "Procedure"})
LABS = {"Observation": frozenset({(OBS_CAT, "laboratory")})}


def _obs(oid: str, category: str | None, code: str, system: str | None = OBS_CAT) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": code},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-01",
        "valueQuantity": {"value": 1.0, "unit": "x"},
    }
    if category is not None:
        coding = {"code": category} | ({"system": system} if system else {})
        res["category"] = [{"coding": [{"system": "http://other", "code": "z"}, coding]}]
    return res


RESOURCES: list[dict[str, Any]] = [
    _obs("lab1", "laboratory", "4548-4"),
    _obs("lab2", "laboratory", "2345-7"),
    _obs("vs1", "vital-signs", "8480-6"),
    _obs("lab-other-system", "laboratory", "1-1", system="http://elsewhere"),
    _obs("nocat", None, "2-2"),
    # system of one coding, code of another: not a match for system|code
    _obs("split", "vital-signs", "3-3")
    | {
        "category": [
            {"coding": [{"system": OBS_CAT, "code": "z"}, {"system": "x", "code": "laboratory"}]}
        ]
    },
    {
        "resourceType": "Condition",
        "id": "c-prob",
        "subject": {"reference": "Patient/p1"},
        "category": [{"coding": [{"system": COND_CAT, "code": "problem-list-item"}]}],
        "code": {"text": "Asthma"},
    },
    {
        "resourceType": "Condition",
        "id": "c-enc",
        "subject": {"reference": "Patient/p1"},
        "category": [{"coding": [{"system": COND_CAT, "code": "encounter-diagnosis"}]}],
        "code": {"text": "Sprain"},
    },
    {
        "resourceType": "AllergyIntolerance",
        "id": "a-food",
        "patient": {"reference": "Patient/p1"},
        "category": ["food"],
        "code": {"text": "Peanut"},
    },
    {
        "resourceType": "AllergyIntolerance",
        "id": "a-med",
        "patient": {"reference": "Patient/p1"},
        "category": ["medication"],
        "code": {"text": "Penicillin"},
    },
    {
        "resourceType": "Procedure",
        "id": "pr-surg",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "category": {"coding": [{"system": "http://snomed.info/sct", "code": "387713003"}]},
        "code": {"text": "Appendectomy"},
    },
]
IDS = {r["id"]: r for r in RESOURCES}


@pytest.mark.parametrize(
    ("categories", "visible"),
    [
        ({}, set(IDS)),
        (LABS, {"lab1", "lab2"} | {"c-prob", "c-enc", "a-food", "a-med", "pr-surg"}),
        (
            {"Observation": frozenset({(None, "laboratory")})},
            {"lab1", "lab2", "lab-other-system", "split"},
        ),
        (
            {"Observation": frozenset({(OBS_CAT, "laboratory"), (OBS_CAT, "vital-signs")})},
            {"lab1", "lab2", "vs1"},
        ),
        ({"Condition": frozenset({(COND_CAT, "problem-list-item")})}, {"c-prob"}),
        ({"AllergyIntolerance": frozenset({(None, "food")})}, {"a-food"}),
        ({"Procedure": frozenset({("http://snomed.info/sct", "387713003")})}, {"pr-surg"}),
        ({"Procedure": frozenset({(None, "nothing-like-it")})}, set()),
    ],
)
def test_sql_predicate_matches_python_twin(
    database: Database, categories: dict[str, frozenset[tuple[str | None, str]]], visible: set[str]
) -> None:
    """``visible_sql`` (jsonpath over the raw JSON) and ``AccessFilter.admits`` agree, row by row."""
    access = AccessFilter("ehr-a", "p1", TYPES, categories)
    restricted = set(categories)
    expect = {i for i, r in IDS.items() if r["resourceType"] not in restricted} | visible
    assert {i for i, r in IDS.items() if access.admits(r)} == expect

    db = _store_db(database)

    async def run() -> set[str]:
        engine = create_engine(db, pool_size=1)
        try:
            async with engine.connect() as conn:
                refs = {(r["resourceType"], r["id"]) for r in RESOURCES}
                return {i for _, i in await existing_refs(conn, access, refs)}
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == expect


_DB: dict[str, Database] = {}


def _store_db(database: Database) -> Database:
    """One scratch database holding ``RESOURCES`` (stored with full access) and their facts."""
    if "db" in _DB:
        return _DB["db"]
    db = scratch_database(database, "cats")
    full = AccessFilter("ehr-a", "p1", TYPES)

    async def fill() -> None:
        engine = create_engine(db, pool_size=1)
        await upgrade(engine)
        try:
            async with engine.begin() as conn:
                await repo.store_resources(conn, full, [(r, content_hash(r)) for r in RESOURCES])
                facts = []
                for r in RESOURCES:
                    fact = project(r)
                    assert fact is not None
                    fact.source_hash = content_hash(r)
                    facts.append(fact)
                await repo.store_facts(conn, full, facts)
        finally:
            await engine.dispose()

    asyncio.run(fill())
    _DB["db"] = db
    return db


def test_every_read_path_hides_other_categories(database: Database) -> None:
    db = _store_db(database)
    labs = AccessFilter("ehr-a", "p1", frozenset({"Observation"}), LABS)

    async def run() -> None:
        engine = create_engine(db, pool_size=1)
        try:
            async with engine.connect() as conn:
                assert await get_resource(conn, labs, "Observation", "lab1") is not None
                assert await get_resource(conn, labs, "Observation", "vs1") is None
                got = await repo.get_resources(conn, labs, "Observation")
                assert sorted(r["id"] for r in got) == ["lab1", "lab2"]
                by_id = await repo.get_resources_by_id(conn, labs, "Observation", ["lab1", "vs1"])
                assert set(by_id) == {"lab1"}
                keyed = await repo.get_resources_by_key(
                    conn, labs, [("Observation", "vs1"), ("Observation", "lab2")]
                )
                assert [c["id"] for c, _ in keyed] == ["lab2"]
                facts = await list_facts(conn, labs, "Observation")
                assert sorted(f["id"] for f in facts) == ["lab1", "lab2"]
                assert await list_facts(conn, labs, "Observation", codes=["8480-6"]) == []
                codes = await fact_codes(conn, labs, ["Observation", "Condition"])
                assert sorted(c["code"] for c in codes) == ["2345-7", "4548-4"]
                unindexed = await repo.unindexed_facts(conn, labs)
                assert sorted(f["id"] for f in unindexed) == ["lab1", "lab2"]
                health = await repo.chart_health(conn, labs)
                assert health["unindexed"] == 2
                assert await repo.stale_resources(conn, labs, ["Observation"]) == []
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_a_narrow_tombstone_removes_only_what_it_could_see(database: Database) -> None:
    db = scratch_database(database, "tomb")
    full = AccessFilter("ehr-a", "p1", TYPES)
    labs = AccessFilter("ehr-a", "p1", frozenset({"Observation"}), LABS)

    async def run() -> set[str]:
        engine = create_engine(db, pool_size=1)
        await upgrade(engine)
        try:
            async with engine.begin() as conn:
                await repo.store_resources(conn, full, [(r, content_hash(r)) for r in RESOURCES])
                # A complete labs-only pull that returned lab1 only: lab2 is gone; vs1 was never
                # the narrow pull's to see, so it stays.
                gone = await repo.tombstone(conn, labs, ["Observation"], [("Observation", "lab1")])
                assert gone == [("Observation", "lab2")]
            async with engine.connect() as conn:
                return {i for _, i in await repo.stored_hashes(conn, full)}
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == set(IDS) - {"lab2"}


def test_sync_run_counts_of_a_broader_run_are_hidden(database: Database) -> None:
    db = _store_db(database)
    full = AccessFilter("ehr-a", "p1", TYPES)
    labs = AccessFilter("ehr-a", "p1", frozenset({"Observation", "Condition"}), LABS)

    async def run() -> None:
        engine = create_engine(db, pool_size=1)
        try:
            async with engine.begin() as conn:
                wide = await repo.create_sync_run(conn, full, session_id="w")
                narrow = await repo.create_sync_run(conn, labs, session_id="n")
                for sid in (wide, narrow):
                    await repo.update_sync_run(
                        conn, full, sid, counts={"Observation": 9, "Condition": 2, "skipped": 1}
                    )
            async with engine.connect() as conn:
                w = await repo.get_sync_run(conn, labs, wide)
                n = await repo.get_sync_run(conn, labs, narrow)
                assert w is not None and n is not None
                assert w["counts"] == {"Condition": 2, "skipped": 1}
                assert n["counts"] == {"Observation": 9, "Condition": 2, "skipped": 1}
                assert n["types"] == ["Condition", f"Observation?category={OBS_CAT}|laboratory"]
                full_view = await repo.get_sync_run(conn, full, wide)
                assert full_view is not None and full_view["counts"]["Observation"] == 9
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_python_twin_shapes() -> None:
    assert category_matches({"category": ["food"]}, frozenset({(None, "food")}))
    assert not category_matches({"category": ["food"]}, frozenset({("http://x", "food")}))
    assert category_matches(
        {"category": {"coding": [{"system": "s", "code": "c"}]}}, frozenset({("s", "c")})
    )
    assert not category_matches(
        {"category": [{"coding": [{"system": "s"}]}]}, frozenset({("s", "c")})
    )
    assert not category_matches({}, frozenset({(None, "c")}))
    # system and code must be on the same coding
    split = {"category": [{"coding": [{"system": "s", "code": "x"}, {"system": "t", "code": "c"}]}]}
    assert not category_matches(split, frozenset({("s", "c")}))


def test_filter_invariants() -> None:
    a = AccessFilter("ehr-a", "p1", frozenset({"Observation", "Condition"}), LABS)
    assert "p1" not in repr(a) and "laboratory" in repr(a)
    assert a.narrowed(frozenset({"Observation", "Immunization"})).categories == LABS
    assert a.narrowed(frozenset({"Observation"})).resource_types == {"Observation"}
    wide = a.widened_for_support(frozenset({"Medication", "Observation"}))
    assert wide.restricted("Observation") == LABS["Observation"]  # never lifted
    empty = AccessFilter("ehr-a", "p1", frozenset({"Observation"}), {"Observation": frozenset()})
    assert not empty.allows("Observation")
    stray = AccessFilter("ehr-a", "p1", frozenset({"Condition"}), LABS)
    assert not stray.allows("Observation") and dict(stray.categories) == {}
    with pytest.raises(ValueError):
        AccessFilter("", "p1", frozenset({"Observation"}), LABS)
    with pytest.raises(ValueError):
        AccessFilter("ehr-a", "", frozenset({"Observation"}), LABS)
