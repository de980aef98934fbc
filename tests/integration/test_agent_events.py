"""Agent events as shared, audited state: recorded over REST and MCP, read by the other agents,
references checked like citations, append-only and chained into the audit trail."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from launch.db import create_engine
from launch.demo_client import sync_patient
from smart_app.agent_events import verify_events
from smart_app.audit import verify_chain
from smart_app.repository import iter_audit
from smart_app.scopes import GrantedScopes
from smart_app.session import access_for
from tests.conftest import RunningDemo
from tests.integration.conftest import Synced
from tests.integration.helpers import owned
from tests.integration.test_mcp import OBS_ONLY, body, error, mcp, rest, token


@pytest.fixture(scope="module")
def chart(demo: RunningDemo) -> str:
    """A patient of these tests alone, synced with an app's token (events leave many audit
    records: the shared patients' trails stay as the other tests expect them)."""
    patient = str(demo.store.patients()[4]["id"])
    with rest(demo, token(demo, patient)) as c:
        assert sync_patient(c, full=True)["status"] == "done"
    return patient


def _event(**extra: Any) -> dict[str, Any]:
    return {"agent": "summary-agent", "type": "summary", "payload": {"text": "ok"}, **extra}


def _obs(demo: RunningDemo, patient: str, n: int = 0) -> str:
    return f"Observation/{owned(demo.store, patient, 'Observation')[n]['id']}"


def _med(demo: RunningDemo, patient: str) -> str:
    return f"MedicationRequest/{owned(demo.store, patient, 'MedicationRequest')[0]['id']}"


def test_rest_event_is_recorded_and_read_back(demo: RunningDemo, chart: str) -> None:
    bearer = token(demo, chart)
    obs, med = _obs(demo, chart), _med(demo, chart)
    encounter = owned(demo.store, chart, "Encounter")[0]["id"]
    with rest(demo, bearer) as c:
        answer = c.post("/api/ask", json={"question": "active medications"}).json()
        posted = c.post(
            "/api/agent-events",
            json=_event(
                encounter=f"Encounter/{encounter}",
                refs=[obs],
                answer_ids=[answer["answer_id"]],
                payload={
                    "text": f"HbA1c above target, see {obs}.",
                    "statements": [{"text": "On a medication", "citations": [med]}],
                    "priority": 2,
                },
            ),
        )
        assert posted.status_code == 201, posted.text
        event = posted.json()
        assert event["patient"] == f"Patient/{chart}"
        assert event["encounter"] == f"Encounter/{encounter}"
        assert {obs, med, f"Encounter/{encounter}"} | set(answer["citations"]) == set(event["refs"])
        assert event["answer_ids"] == [answer["answer_id"]] and event["client_id"]
        listed = c.get("/api/agent-events", params={"agent": "summary-agent"}).json()["events"]
        assert event in listed
        by_encounter = c.get("/api/agent-events", params={"encounter": f"Encounter/{encounter}"})
        assert [e["id"] for e in by_encounter.json()["events"]] == [event["id"]]
        later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        assert c.get("/api/agent-events", params={"since": later}).json()["events"] == []
        assert c.get("/api/agent-events", params={"type": "triage"}).json()["events"] == [
            e for e in listed if e["type"] == "triage"
        ]


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("other_patients_resource", 422, "reference_refused"),
        ("other_patient_in_text", 422, "reference_refused"),
        ("unknown_resource", 422, "reference_refused"),
        ("other_patients_answer", 422, "reference_refused"),
        ("out_of_scope_ref", 403, "insufficient_scope"),
        ("out_of_scope_citation", 403, "insufficient_scope"),
        ("malformed_reference", 422, "reference_refused"),
        ("control_characters", 422, "invalid_request"),
        ("too_large", 422, "invalid_request"),
        ("too_deep", 422, "invalid_request"),
        ("not_finite", 422, "invalid_request"),
    ],
)
def test_refused_events(
    demo: RunningDemo, chart: str, patient_b: Synced, case: str, status: int, code: str
) -> None:
    a, b = chart, patient_b.patient_id
    scope = OBS_ONLY if case.startswith("out_of_scope") else "launch patient/*.rs"
    bearer = token(demo, a, scope=scope)
    raw: bytes | None = None
    if case == "other_patients_resource":
        event = _event(refs=[_obs(demo, b)])
    elif case == "other_patient_in_text":
        event = _event(payload={"text": f"compare with Patient/{b}"})
    elif case == "unknown_resource":
        event = _event(payload={"findings": [{"reference": "Observation/does-not-exist"}]})
    elif case == "other_patients_answer":
        other = patient_b.client.post("/api/ask", json={"question": "HbA1c"}).json()
        event = _event(answer_ids=[other["answer_id"]])
    elif case == "out_of_scope_ref":
        event = _event(refs=[_med(demo, a)])
    elif case == "out_of_scope_citation":
        event = _event(payload={"statements": [{"text": "x", "citations": [_med(demo, a)]}]})
    elif case == "malformed_reference":
        event = _event(payload={"citations": ["not a reference"]})
    elif case == "control_characters":
        event = _event(payload={"text": "bell\x07"})
    elif case == "too_large":
        event = _event(payload={"text": "x" * 20_000})
    elif case == "too_deep":
        deep: Any = "leaf"
        for _ in range(12):
            deep = {"d": deep}
        event = _event(payload=deep)
    else:
        event = {}
        raw = b'{"agent": "a", "type": "summary", "payload": {"x": NaN}}'
    with rest(demo, bearer) as c:
        before = c.get("/api/agent-events", params={"limit": 500}).json()["events"]
        if raw is not None:
            r = c.post(
                "/api/agent-events", content=raw, headers={"Content-Type": "application/json"}
            )
        else:
            r = c.post("/api/agent-events", json=event)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
        assert c.get("/api/agent-events", params={"limit": 500}).json()["events"] == before
        assert b not in r.text  # the refusal does not echo the other patient's id


async def test_mcp_events_are_shared_between_agents(demo: RunningDemo, chart: str) -> None:
    """Agent 1 records over MCP, agent 2 (another token, same patient) reads it over MCP."""
    obs = _obs(demo, chart, 1)
    async with mcp(demo, token(demo, chart)) as first:
        answer = body(await first.call_tool("ask", {"question": "HbA1c trend"}))
        recorded = body(
            await first.call_tool(
                "record_event",
                _event(
                    agent="triage-agent",
                    type="triage",
                    refs=[obs],
                    answer_ids=[answer["answer_id"]],
                    payload={"text": "needs review", "priority": "high"},
                ),
            )
        )
        refused = await first.call_tool(
            "record_event", _event(agent="triage-agent", refs=["Observation/nope"])
        )
        assert error(refused) == "reference_refused"
    async with mcp(demo, token(demo, chart)) as second:
        seen = body(await second.call_tool("list_events", {"agent": "triage-agent"}))["events"]
        assert recorded in seen
        assert all(e["agent"] == "triage-agent" for e in seen)
        typed = body(await second.call_tool("list_events", {"type": "triage", "limit": 1}))
        assert typed["events"] == [recorded]  # the newest one
    with rest(demo, token(demo, chart)) as c:
        entries = c.get("/api/audit", params={"limit": 1000}).json()["entries"]
    chained = [e for e in entries if e["hash"] == recorded["audit_hash"]]
    assert len(chained) == 1 and chained[0]["action"] == "agent_event"
    assert chained[0]["detail"]["event_id"] == recorded["id"]
    assert chained[0]["detail"]["payload_sha256"] == recorded["payload_sha256"]
    tools = [
        e for e in entries if e["action"] == "mcp_tool" and e["detail"]["tool"] == "record_event"
    ]
    assert {"ok", "reference_refused"} <= {e["outcome"] for e in tools}


def test_narrower_scopes_do_not_see_events_resting_on_hidden_types(
    demo: RunningDemo, chart: str
) -> None:
    full = token(demo, chart)
    with rest(demo, full) as c:
        med_event = c.post(
            "/api/agent-events",
            json=_event(agent="med-agent", refs=[_med(demo, chart)]),
        ).json()
        obs_event = c.post(
            "/api/agent-events",
            json=_event(agent="lab-agent", refs=[_obs(demo, chart)]),
        ).json()
    with rest(demo, token(demo, chart, scope=OBS_ONLY)) as c:
        ids = {e["id"] for e in c.get("/api/agent-events", params={"limit": 500}).json()["events"]}
    assert obs_event["id"] in ids and med_event["id"] not in ids


def test_events_are_append_only_and_chained(demo: RunningDemo, chart: str) -> None:
    with rest(demo, token(demo, chart)) as c:
        assert c.post("/api/agent-events", json=_event()).status_code == 201
        ctx = c.get("/api/context").json()

    async def check() -> None:
        engine = create_engine(demo.database, pool_size=1)  # the owner: still refused
        try:
            async with engine.connect() as conn:
                rows = [r async for r in iter_audit(conn)]
                assert verify_chain(rows).ok
                src = (
                    await conn.execute(
                        text("SELECT DISTINCT source FROM agent_event WHERE patient_id = :p"),
                        {"p": chart},
                    )
                ).scalar_one()
                access = access_for(GrantedScopes.parse(" ".join(ctx["scopes"])), src, chart)
                total, good = await verify_events(conn, access)
                assert total >= 1 and good == total
            for sql in (
                "UPDATE agent_event SET agent = 'x'",
                "DELETE FROM agent_event",
                "TRUNCATE agent_event",
            ):
                with pytest.raises(DBAPIError, match="append-only"):
                    async with engine.begin() as conn:
                        await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(check())


def test_rest_requires_a_session(demo: RunningDemo) -> None:
    with httpx2.Client(base_url=demo.base_url, timeout=30) as c:
        assert c.get("/api/agent-events").status_code == 401
        assert c.post("/api/agent-events", json=_event()).status_code == 401
