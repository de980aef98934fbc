"""The MCP server at ``/mcp`` through the official MCP Python client over real HTTP: tool listing
and schemas, ``ask`` equal to ``POST /api/ask``, scope narrowing and patient isolation through
every tool, refused tokens, and an audit record for every call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import jsonschema
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from launch.demo_client import code_flow_token
from tests.conftest import RunningDemo
from tests.integration.conftest import Synced
from tests.integration.helpers import HBA1C, owned

TOOLS = {
    "ask",
    "get_answer",
    "read_resource",
    "list_facts",
    "search_notes",
    "record_event",
    "list_events",
}
OBS_ONLY = "launch patient/Observation.rs"


def token(demo: RunningDemo, patient: str, scope: str = "launch patient/*.rs") -> str:
    return code_flow_token(
        demo.base_url, "/ehr", patient, client_id=demo.settings.client_id, scope=scope
    )


@asynccontextmanager
async def mcp(demo: RunningDemo, bearer: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"}, timeout=120)
    async with http, Client(streamable_http_client(f"{demo.base_url}/mcp", http_client=http)) as c:
        yield c


def body(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    text = result.content[0].text  # type: ignore[union-attr]
    assert json.loads(text) == result.structured_content  # the text block says the same
    return result.structured_content


def error(result: CallToolResult) -> str:
    assert result.is_error
    return str(json.loads(result.content[0].text)["error"]["code"])  # type: ignore[union-attr]


def rest(demo: RunningDemo, bearer: str) -> httpx2.Client:
    return httpx2.Client(
        base_url=demo.base_url, timeout=120, headers={"Authorization": f"Bearer {bearer}"}
    )


def audit(demo: RunningDemo, bearer: str, action: str) -> list[dict[str, Any]]:
    with rest(demo, bearer) as c:
        entries = c.get("/api/audit", params={"limit": 1000}).json()["entries"]
    return [e for e in entries if e["action"] == action]


def refs_in(value: Any) -> set[str]:
    """Every ``Type/id`` string anywhere in a tool result — except an event's ``recorded_by``, the
    fhirUser who recorded it (who, not what: not a resource of the chart)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k != "recorded_by":
                found |= refs_in(v)
        found |= {k for k in value if isinstance(k, str) and "/" in k and k[:1].isupper()}
    elif isinstance(value, list):
        for v in value:
            found |= refs_in(v)
    elif isinstance(value, str) and "/" in value and value[:1].isupper() and " " not in value:
        found.add(value)
    return found


async def test_tools_are_listed_with_typed_schemas(demo: RunningDemo, patient_a: Synced) -> None:
    async with mcp(demo, token(demo, patient_a.patient_id)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.input_schema["type"] == "object" and tool.output_schema is not None
        assert tool.output_schema["type"] == "object"
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)
        jsonschema.Draft202012Validator.check_schema(tool.output_schema)
        assert tool.description
    assert tools["ask"].input_schema["required"] == ["question"]
    names = {p.lower() for t in tools.values() for p in t.input_schema["properties"]}
    assert not [n for n in names if "patient" in n]  # the patient is the token's, never an input
    kinds = tools["list_facts"].input_schema["properties"]["kind"]["enum"]
    assert set(kinds) >= {"labs", "vitals", "medications", "problems", "allergies"}
    assert {"statements", "citations", "answer_id"} <= set(tools["ask"].output_schema["properties"])
    assert tools["read_resource"].annotations.read_only_hint is True  # type: ignore[union-attr]


async def test_ask_is_the_rest_answer(demo: RunningDemo, patient_a: Synced) -> None:
    bearer = token(demo, patient_a.patient_id)
    question = "What was the HbA1c trend and which medications were prescribed?"
    async with mcp(demo, bearer) as client:
        answer = body(await client.call_tool("ask", {"question": question}))
        again = body(await client.call_tool("get_answer", {"answer_id": answer["answer_id"]}))
    with rest(demo, bearer) as c:
        via_rest = c.post("/api/ask", json={"question": question}).json()
        stored = c.get(f"/api/answers/{answer['answer_id']}").json()
    assert again == answer == stored  # stored unchanged, read back through both
    volatile = ("answer_id", "latency_ms")
    same = {k: v for k, v in answer.items() if k not in volatile}
    assert same == {k: v for k, v in via_rest.items() if k not in volatile}
    assert answer["statements"] and answer["citations"]
    asks = [e for e in audit(demo, bearer, "ask") if e["detail"].get("tool") == "ask"]
    assert any(e["detail"]["answer_id"] == answer["answer_id"] for e in asks)


async def test_every_tool_stays_in_one_patient(
    demo: RunningDemo, patient_a: Synced, patient_b: Synced
) -> None:
    """A token for B: nothing of A through any tool, by id or by search."""
    a_refs = {
        f"{t}/{r['id']}"
        for t in ("Observation", "MedicationRequest", "Condition", "DocumentReference")
        for r in owned(demo.store, patient_a.patient_id, t)
    }
    b_token = token(demo, patient_b.patient_id)
    seen: set[str] = set()
    async with mcp(demo, b_token) as client:
        a_obs = owned(demo.store, patient_a.patient_id, "Observation")[0]
        crossed = await client.call_tool(
            "read_resource", {"resource_type": "Observation", "resource_id": a_obs["id"]}
        )
        assert error(crossed) == "resource_not_found"
        a_answer = patient_a.client.post("/api/ask", json={"question": "active meds"}).json()
        other = await client.call_tool("get_answer", {"answer_id": a_answer["answer_id"]})
        assert error(other) == "answer_not_found"
        for kind in ("labs", "vitals", "medications", "problems", "encounters"):
            seen |= refs_in(body(await client.call_tool("list_facts", {"kind": kind})))
        seen |= refs_in(body(await client.call_tool("search_notes", {"query": "follow up plan"})))
        seen |= refs_in(body(await client.call_tool("ask", {"question": "HbA1c trend"})))
        seen |= refs_in(body(await client.call_tool("list_events", {})))
        refused = await client.call_tool(
            "record_event",
            {"agent": "x", "type": "summary", "refs": [f"Observation/{a_obs['id']}"]},
        )
        assert error(refused) == "reference_refused"
        named = await client.call_tool(
            "ask", {"question": "HbA1c", "patient": f"Patient/{patient_a.patient_id}"}
        )
        assert error(named) == "invalid_arguments"  # no tool takes a patient
    assert seen and not seen & a_refs
    assert f"Patient/{patient_a.patient_id}" not in seen


async def test_observation_only_token_gets_no_medications(
    demo: RunningDemo, patient_a: Synced
) -> None:
    obs_token = token(demo, patient_a.patient_id, scope=OBS_ONLY)
    med = owned(demo.store, patient_a.patient_id, "MedicationRequest")[0]
    seen: set[str] = set()
    async with mcp(demo, obs_token) as client:
        labs = body(await client.call_tool("list_facts", {"kind": "labs", "codes": [HBA1C]}))
        assert labs["facts"] and {f["code"] for f in labs["facts"]} == {HBA1C}
        seen |= refs_in(labs)
        seen |= refs_in(body(await client.call_tool("list_facts", {"kind": "vitals"})))
        for kind in ("medications", "problems", "encounters"):
            assert error(await client.call_tool("list_facts", {"kind": kind})) == (
                "insufficient_scope"
            )
        read = await client.call_tool(
            "read_resource", {"resource_type": "MedicationRequest", "resource_id": med["id"]}
        )
        assert error(read) == "insufficient_scope"
        assert error(await client.call_tool("search_notes", {"query": "plan"})) == (
            "insufficient_scope"
        )
        event = await client.call_tool(
            "record_event",
            {"agent": "x", "type": "summary", "refs": [f"MedicationRequest/{med['id']}"]},
        )
        assert error(event) == "insufficient_scope"
        answer = body(await client.call_tool("ask", {"question": "which medications and HbA1c"}))
        seen |= refs_in(answer)
        seen |= refs_in(body(await client.call_tool("list_events", {})))
    types = {r.split("/", 1)[0] for r in seen - {f"Patient/{patient_a.patient_id}"}}
    assert types == {"Observation"}, types


async def test_facts_and_notes_of_the_patient(demo: RunningDemo, patient_a: Synced) -> None:
    a = patient_a.patient_id
    hba1c = {f"Observation/{o['id']}" for o in owned(demo.store, a, "Observation")}
    notes = {f"DocumentReference/{d['id']}" for d in owned(demo.store, a, "DocumentReference")}
    async with mcp(demo, token(demo, a)) as client:
        labs = body(await client.call_tool("list_facts", {"kind": "labs", "codes": [HBA1C]}))
        dates = sorted(f["date"] for f in labs["facts"])
        since = dates[len(dates) // 2][:10]
        recent = body(
            await client.call_tool("list_facts", {"kind": "labs", "codes": [HBA1C], "since": since})
        )
        meds = body(await client.call_tool("list_facts", {"kind": "medications", "limit": 3}))
        found = body(await client.call_tool("search_notes", {"query": "assessment and plan"}))
    assert {f["reference"] for f in labs["facts"]} <= hba1c and len(labs["facts"]) >= 2
    assert all(f["category"] == "laboratory" and f["value"] is not None for f in labs["facts"])
    assert recent["facts"] and all(f["date"][:10] >= since for f in recent["facts"])
    assert len(recent["facts"]) < len(labs["facts"])
    assert 0 < len(meds["facts"]) <= 3 and all(f["display"] for f in meds["facts"])
    assert found["passages"] and {p["reference"] for p in found["passages"]} <= notes
    assert all(p["text"] for p in found["passages"])


async def test_tool_calls_are_audited(demo: RunningDemo, patient_a: Synced) -> None:
    bearer = token(demo, patient_a.patient_id)
    obs = owned(demo.store, patient_a.patient_id, "Observation")[0]
    args = {"resource_type": "Observation", "resource_id": obs["id"]}
    async with mcp(demo, bearer) as client:
        read = body(await client.call_tool("read_resource", args))
        missing = await client.call_tool(
            "read_resource", {"resource_type": "Observation", "resource_id": "no-such-id"}
        )
    assert read["reference"] == f"Observation/{obs['id']}"
    assert read["resource"]["id"] == obs["id"]
    assert error(missing) == "resource_not_found"
    calls = [e for e in audit(demo, bearer, "mcp_tool") if e["detail"]["tool"] == "read_resource"]
    ok = next(e for e in calls if e["outcome"] == "ok")
    assert ok["detail"]["result_refs"] == [f"Observation/{obs['id']}"]
    assert ok["detail"]["via"] == "bearer" and ok["detail"]["latency_ms"] >= 0
    assert len(ok["detail"]["args_sha256"]) == 64 and obs["id"] not in ok["detail"]["args_sha256"]
    assert any(e["outcome"] == "resource_not_found" for e in calls)
    with rest(demo, bearer) as c:
        fhir = c.get("/api/audit", params={"format": "fhir", "limit": 50})
        raw = c.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "read_resource", "arguments": args}},
            headers={"Accept": "application/json, text/event-stream",
                     "MCP-Protocol-Version": "2025-06-18"},
        )  # fmt: skip
    assert fhir.status_code == 200 and "mcp_tool" in fhir.text
    assert raw.status_code == 200 and raw.json()["result"]["structuredContent"] == read
    assert raw.headers["cache-control"] == "no-store"  # PHI
    with rest(demo, bearer) as c:
        unknown = c.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                  "params": {"name": "drop\u0000tables", "arguments": {}}},
            headers={"Accept": "application/json, text/event-stream",
                     "MCP-Protocol-Version": "2025-06-18"},
        )  # fmt: skip
    assert unknown.status_code == 200 and unknown.json()["result"]["isError"] is True
    assert ("(invalid)", "unknown_tool") in {
        (e["detail"]["tool"], e["outcome"]) for e in audit(demo, bearer, "mcp_tool")
    }


async def test_no_token_is_401_with_protected_resource_metadata(demo: RunningDemo) -> None:
    with httpx2.Client(base_url=demo.base_url, timeout=30) as c:
        r = c.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert r.status_code == 401 and r.json()["error"]["code"] == "no_session"
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        url = challenge.split('resource_metadata="', 1)[1].split('"', 1)[0]
        assert url == f"{demo.base_url}/.well-known/oauth-protected-resource/mcp"
        meta = c.get(url.removeprefix(demo.base_url)).json()
        root = c.get("/.well-known/oauth-protected-resource").json()
    assert meta["resource"] == f"{demo.base_url}/mcp" and root["resource"] == demo.base_url
    assert f"{demo.base_url}/ehr/fhir" in meta["authorization_servers"]
    assert meta["bearer_methods_supported"] == ["header"]


@pytest.mark.parametrize("case", ["garbage", "revoked", "expired"])
async def test_refused_tokens(demo: RunningDemo, patient_a: Synced, case: str) -> None:
    spare = str(demo.store.patients()[-1]["id"])  # revoking its grants harms no other test
    if case == "garbage":
        bearer = "not-a-token"
    elif case == "revoked":  # a real token the EHR ended before its first use here (inactive)
        bearer = token(demo, spare)
        with httpx2.Client(base_url=demo.base_url, timeout=30) as c:
            assert c.post("/ehr/_control/revoke", data={"patient": spare}).json()["revoked"] >= 1
    else:  # an access token of 2 s (the sandbox's launch option), used after it expired
        bearer = token(demo, f"{spare}&token_ttl=3")
        with rest(demo, bearer) as c:
            assert c.get("/api/context").status_code == 200  # valid until it expires
        await asyncio.sleep(4)
    with httpx2.Client(base_url=demo.base_url, timeout=30) as c:
        r = c.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={
                "Authorization": f"Bearer {bearer}",
                "Accept": "application/json, text/event-stream",
            },
        )
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_token"
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert "resource_metadata=" in r.headers["www-authenticate"]
    with pytest.raises(Exception):  # noqa: B017 - the official client fails to connect
        async with mcp(demo, bearer) as client:
            await client.list_tools()
