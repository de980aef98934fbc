"""LLM answers end to end: the real app with an Anthropic key, the real SDK against the fake
Messages API (``launch/sandbox/anthropic_fake.py``) on loopback, real Postgres, the sandbox EHR.

What must hold: no known identifier of the patient in any outbound request; every adversarial
citation removed, streamed (``POST /api/ask/stream``) or not (``LlmAnswerer.answer``); failures
and stalls give the extractive answer with a warning; a client that hangs up cancels the call.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr

from fhir_adapters import AccessFilter
from fhir_adapters.normalize import CLINICAL_TYPES, SUPPORT_TYPES
from launch.app import llm_config
from launch.db import Database, create_engine
from launch.demo_client import launch_patient, sync_patient
from launch.eval import patient_identifiers
from launch.sandbox import SandboxStore
from launch.sandbox.anthropic_fake import FakeAnthropic
from launch.server import BackgroundServer, build_demo, free_port, sandbox_store
from launch.settings import Settings
from rag import load_embedder
from rag.llm import LlmAnswerer, payload_sha256
from smart_app.ehrs import source_key
from tests.conftest import migrated_scratch_database
from tests.integration.helpers import hba1c_patient, owned, owner_of

HBA1C_Q = (
    "What was this patient's HbA1c trend over the last 18 months, and which medications were "
    "previously prescribed?"
)
QUESTIONS = (
    HBA1C_Q,
    "What is the latest blood pressure?",
    "Which allergies does the patient have?",
    "What was the plan at the last visit?",
    "What is the patient's date of birth and age?",
    "What is the patient's name, address and phone number?",
    "What did the history of present illness say?",
    "What does the social history say about where the patient lives?",
    "What did the notes say about follow-up?",
)
TIMEOUT = 3.0


@dataclass
class LlmDemo:
    base_url: str
    settings: Settings
    store: SandboxStore
    database: Database
    fake: FakeAnthropic
    a: httpx2.Client
    a_id: str
    b_id: str
    observations_only: httpx2.Client


def identifiers(patient: dict[str, Any]) -> set[str]:
    """Every known identifier of a Patient resource (the eval's PHI count uses the same)."""
    return patient_identifiers(patient)


def leaks(bodies: list[str], idents: set[str]) -> list[str]:
    import re

    out = []
    for ident in idents:
        pattern = re.compile(r"(?<![\w])" + re.escape(ident) + r"(?![\w])", re.IGNORECASE)
        if any(pattern.search(b) for b in bodies):
            out.append(ident)
    return sorted(out)


def read_events(client: httpx2.Client, question: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("POST", "/api/ask/stream", json={"question": question}) as resp:
        assert resp.status_code == 200, resp.read()[:300]
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                events.append((name, json.loads(line[6:])))
                name = None
    return events


@pytest.fixture(scope="module")
def llm_demo(data_dir: Path, database: Database) -> Iterator[LlmDemo]:
    fake = FakeAnthropic(api_key="test-key")
    fake_port = free_port()
    fake_server = BackgroundServer(fake.app, "127.0.0.1", fake_port)  # type: ignore[arg-type]
    fake_server.start()
    db = migrated_scratch_database(database, "llm")
    port = free_port()
    settings = Settings(
        env="dev",
        data_dir=data_dir,
        port=port,
        anthropic_api_key=SecretStr("test-key"),
        anthropic_base_url=f"http://127.0.0.1:{fake_port}",
        llm_timeout_seconds=TIMEOUT,
        llm_retries=1,
    )
    store = sandbox_store(patients=4)
    built = build_demo(settings, store, database=db)
    server = BackgroundServer(built.app, "127.0.0.1", port)
    server.start()
    a_id = hba1c_patient(store)
    b_id = next(str(p["id"]) for p in store.patients() if p["id"] != a_id)
    clients = []
    for pid, scope in (
        (a_id, None),
        (b_id, None),
        (a_id, "launch openid fhirUser patient/Observation.rs"),
    ):
        client, resp = launch_patient(settings.base_url, pid, scope=scope)
        assert resp.status_code == 200, resp.text[:300]
        assert sync_patient(client, full=True)["status"] == "done"
        clients.append(client)
    yield LlmDemo(
        settings.base_url, built.settings, store, db, fake, clients[0], a_id, b_id, clients[2]
    )
    for c in clients:
        c.close()
    server.stop()
    fake_server.stop()


def _valid_for(demo: LlmDemo, patient_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    """Every streamed fact cites only evidence of this request, stored for this patient."""
    evidence = next(d for n, d in events if n == "evidence")["citations"]
    facts = [d for n, d in events if n == "statement" and d["kind"] == "fact"]
    for s in facts:
        assert s["citations"], s
        for ref in s["citations"]:
            assert ref in evidence, ref
            assert owner_of(demo.store, ref) == patient_id, ref


def test_stream_faithful_llm_answer_stored_and_audited(llm_demo: LlmDemo) -> None:
    llm_demo.fake.configure(mode="faithful")
    llm_demo.fake.clear()
    events = read_events(llm_demo.a, HBA1C_Q)
    names = [n for n, _ in events]
    assert names[0] == "evidence" and names[-1] == "done", names
    assert set(names[1:-1]) == {"statement"}
    done = events[-1][1]
    assert done["mode"] == "llm" and done["warning"] is None
    assert done["usage"]["input_tokens"] > 0 and done["cost_usd"] > 0
    _valid_for(llm_demo, llm_demo.a_id, events)
    facts = [d for n, d in events if n == "statement" and d["kind"] == "fact"]
    assert facts
    stored = llm_demo.a.get(f"/api/answers/{done['answer_id']}").json()
    assert stored["mode"] == "llm"
    assert [s["text"] for s in stored["statements"]] == [
        d["text"] for n, d in events if n == "statement"
    ]
    # The audit keeps the call's model, payload hash, replaced count and usage, not the payload.
    assert len(llm_demo.fake.requests) == 1
    sent = llm_demo.fake.requests[0].body
    entries = llm_demo.a.get("/api/audit").json()["entries"]
    ask = next(
        e
        for e in entries
        if e["action"] == "ask" and e["detail"].get("answer_id") == done["answer_id"]
    )
    call = ask["detail"]["llm_calls"][0]
    assert call["payload_sha256"] == payload_sha256(sent)
    assert call["identifiers_replaced"] > 0
    assert call["usage"]["input_tokens"] > 0
    assert sent["messages"][0]["content"][:40] not in json.dumps(ask)


def test_no_known_identifier_in_any_outbound_request(llm_demo: LlmDemo) -> None:
    llm_demo.fake.configure(mode="faithful")
    llm_demo.fake.clear()
    for q in QUESTIONS:
        read_events(llm_demo.a, q)
        read_events(llm_demo.observations_only, q)  # Patient not in scope: still tokenized
    bodies = llm_demo.fake.bodies()
    assert len(bodies) >= len(QUESTIONS)
    patient = llm_demo.store.get("Patient", llm_demo.a_id)
    assert patient is not None
    idents = identifiers(patient)
    assert len(idents) >= 5
    assert leaks(bodies, idents) == []
    # ...and the placeholders are restored for the clinician.
    events = read_events(llm_demo.a, "What is the patient's date of birth and age?")
    text = " ".join(d["text"] for n, d in events if n == "statement")
    assert "[" not in text or "]" not in text


@pytest.mark.parametrize(
    "mode", ["unretrieved", "foreign", "out_of_scope", "uncited", "unknown_placeholder"]
)
def test_stream_adversarial_citations_never_reach_the_client(llm_demo: LlmDemo, mode: str) -> None:
    client = llm_demo.observations_only if mode == "out_of_scope" else llm_demo.a
    foreign = [
        f"Observation/{r['id']}" for r in owned(llm_demo.store, llm_demo.b_id, "Observation")
    ]
    hidden = [
        f"MedicationRequest/{r['id']}"
        for r in owned(llm_demo.store, llm_demo.a_id, "MedicationRequest")
    ]
    llm_demo.fake.configure(mode=mode, foreign_refs=foreign[:1], out_of_scope_refs=hidden[:1])
    llm_demo.fake.clear()
    question = "What is the latest blood pressure?" if mode == "out_of_scope" else HBA1C_Q
    events = read_events(client, question)
    done = events[-1][1]
    _valid_for(llm_demo, llm_demo.a_id, events)
    # Every model statement was bad: regenerated once, then the extractive answer with a warning.
    assert len(llm_demo.fake.requests) == 2
    assert done["mode"] == "extractive" and done["warning"] == "citations_rejected"
    assert done["removed_statements"] >= 2
    texts = [d["text"] for n, d in events if n == "statement"]
    assert "[PERSON_97]" not in " ".join(texts)
    assert any("could not be used" in t for t in texts)
    assert any(d["kind"] == "fact" for n, d in events if n == "statement")  # still usable


def test_stream_mixed_keeps_the_valid_and_counts_the_dropped(llm_demo: LlmDemo) -> None:
    foreign = [
        f"Observation/{r['id']}" for r in owned(llm_demo.store, llm_demo.b_id, "Observation")
    ]
    llm_demo.fake.configure(mode="mixed", foreign_refs=foreign[:1])
    llm_demo.fake.clear()
    events = read_events(llm_demo.a, HBA1C_Q)
    done = events[-1][1]
    assert done["mode"] == "llm"
    assert done["removed_statements"] == 4
    assert len(llm_demo.fake.requests) == 1
    _valid_for(llm_demo, llm_demo.a_id, events)


@pytest.mark.parametrize(
    ("config", "warning", "requests"),
    [
        ({"mode": "error", "error_status": 529}, "http_529", 2),
        ({"mode": "error", "error_status": 500}, "http_500", 2),
        ({"mode": "error", "error_status": 429, "fail_first": 1}, None, 2),
        ({"mode": "no_tool"}, "malformed_output", 1),
        ({"mode": "stall", "stall_seconds": 30}, "timeout", 1),
    ],
)
def test_model_failures_fall_back_to_extractive(
    llm_demo: LlmDemo, config: dict[str, Any], warning: str | None, requests: int
) -> None:
    llm_demo.fake.configure(**config)
    llm_demo.fake.clear()
    started = time.monotonic()
    events = read_events(llm_demo.a, HBA1C_Q)
    elapsed = time.monotonic() - started
    done = events[-1][1]
    assert done["warning"] == warning
    assert done["mode"] == ("llm" if warning is None else "extractive")
    assert len(llm_demo.fake.requests) == requests
    assert any(d["kind"] == "fact" for n, d in events if n == "statement")
    assert elapsed < 30  # never waits on the stalled model
    stored = llm_demo.a.get(f"/api/answers/{done['answer_id']}")
    assert stored.status_code == 200


def test_gating_no_model_call_when_nothing_relevant(llm_demo: LlmDemo) -> None:
    llm_demo.fake.configure(mode="faithful")
    llm_demo.fake.clear()
    events = read_events(llm_demo.a, "Does the patient have known sarcoidosis?")
    assert events[-1][1]["mode"] == "extractive"
    assert llm_demo.fake.requests == []


def test_client_disconnect_cancels_the_model_call(llm_demo: LlmDemo) -> None:
    llm_demo.fake.configure(mode="stall", stall_seconds=20)
    llm_demo.fake.clear()

    def asks() -> int:
        entries = llm_demo.a.get("/api/audit", params={"limit": 1000}).json()["entries"]
        return sum(1 for e in entries if e["action"] == "ask")

    before = asks()
    with llm_demo.a.stream("POST", "/api/ask/stream", json={"question": HBA1C_Q}) as resp:
        lines = resp.iter_lines()
        assert next(lines) == "event: evidence"
        deadline = time.monotonic() + 5
        while not llm_demo.fake.requests and time.monotonic() < deadline:
            time.sleep(0.05)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not llm_demo.fake.requests[0].disconnected:
        time.sleep(0.05)
    assert llm_demo.fake.requests[0].disconnected
    time.sleep(0.5)
    assert asks() == before  # nothing stored (nor audited) for the abandoned answer


@pytest.mark.parametrize("mode", ["unretrieved", "foreign", "uncited", "mixed"])
def test_non_streamed_answer_validates_the_same_way(llm_demo: LlmDemo, mode: str) -> None:
    """``LlmAnswerer.answer`` in-process, with the JSON (non-streaming) wire format."""
    foreign = [
        f"Observation/{r['id']}" for r in owned(llm_demo.store, llm_demo.b_id, "Observation")
    ]
    llm_demo.fake.configure(mode=mode, foreign_refs=foreign[:1])
    llm_demo.fake.clear()
    config = llm_config(llm_demo.settings.model_copy(update={"llm_stream": False}))
    assert config is not None

    async def run() -> Any:
        engine = create_engine(llm_demo.database, pool_size=2)
        answerer = LlmAnswerer(config, None)
        embedder = load_embedder(llm_demo.settings.resolved_model_dir)
        access = AccessFilter(
            source_key(f"{llm_demo.base_url}/ehr/fhir"),
            llm_demo.a_id,
            CLINICAL_TYPES | SUPPORT_TYPES,
        )
        try:
            return await answerer.answer(engine, embedder, access, HBA1C_Q)
        finally:
            await answerer.close()
            await engine.dispose()

    result = asyncio.run(run())
    assert all(not r.stream for r in llm_demo.fake.requests)
    facts = [s for s in result.body.statements if s.kind == "fact"]
    assert facts
    for s in facts:
        for ref in s.citations:
            assert owner_of(llm_demo.store, ref) == llm_demo.a_id
            assert ref in result.body.citations
    if mode == "mixed":
        assert result.body.mode == "llm" and result.body.removed_statements == 4
    else:
        assert result.fallback == "citations_rejected" and result.body.mode == "extractive"


@pytest.mark.parametrize("mode", ["faithful", "foreign"])
def test_post_ask_takes_the_same_llm_path(llm_demo: LlmDemo, mode: str) -> None:
    """``POST /api/ask`` (not streamed) goes through the model too, with the same validator,
    storage and audit as the stream."""
    foreign = [
        f"Observation/{r['id']}" for r in owned(llm_demo.store, llm_demo.b_id, "Observation")
    ]
    llm_demo.fake.configure(mode=mode, foreign_refs=foreign[:1])
    llm_demo.fake.clear()
    r = llm_demo.a.post("/api/ask", json={"question": HBA1C_Q})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert llm_demo.fake.requests, "the model was not called"
    facts = [s for s in body["statements"] if s["kind"] == "fact"]
    assert facts
    for s in facts:
        for ref in s["citations"]:
            assert ref in body["citations"] and owner_of(llm_demo.store, ref) == llm_demo.a_id
    if mode == "faithful":
        assert body["mode"] == "llm" and body["removed_statements"] == 0
    else:
        assert body["mode"] == "extractive" and body["removed_statements"] >= 2
    assert llm_demo.a.get(f"/api/answers/{body['answer_id']}").json() == body
    entries = llm_demo.a.get("/api/audit").json()["entries"]
    ask = next(
        e
        for e in entries
        if e["action"] == "ask" and e["detail"].get("answer_id") == body["answer_id"]
    )
    assert ask["detail"]["llm_calls"]
    assert ask["detail"]["stream"] is False
