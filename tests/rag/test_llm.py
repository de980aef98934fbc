"""``rag/llm.py``: the prompt, the tool output, restoring, and the real SDK against the fake
Messages API on loopback (JSON and SSE, retries on 429/529, the overall timeout)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import pytest
from anthropic.types import TextBlock, ToolUseBlock

from launch.sandbox.anthropic_fake import FakeAnthropic, faithful_statements
from launch.server import BackgroundServer, free_port
from rag.answer import AnswerBody, CitationInfo, Statement
from rag.ask import Composed
from rag.llm import (
    SYSTEM,
    TOOL_NAME,
    CallRecord,
    LlmAnswerer,
    LlmConfig,
    ModelOutputError,
    evidence_items,
    payload_sha256,
    prompt_texts,
    restored_statements,
    tool_statements,
    user_message,
)
from rag.phi import PhiVault, tokenize

PATIENT = {
    "resourceType": "Patient",
    "id": "pat-9",
    "name": [{"given": ["Ines"], "family": "Bergstrom"}],
    "birthDate": "1950-02-03",
}


def composed() -> Composed:
    evidence = {
        "Observation/a1": CitationInfo(
            resource_type="Observation",
            id="a1",
            display="Hemoglobin A1c",
            date="2024-03-01",
            value="7.2 %",
        ),
        "Observation/a2": CitationInfo(
            resource_type="Observation",
            id="a2",
            display="Hemoglobin A1c",
            date="2024-09-01",
            value="6.8 %",
        ),
        "DocumentReference/n1": CitationInfo(
            resource_type="DocumentReference", id="n1", display="Progress note", date="2024-09-01"
        ),
    }
    body = AnswerBody(
        answer_id="00000000-0000-0000-0000-000000000001",
        patient="Patient/pat-9",
        question="a1c?",
        statements=[
            Statement(
                text="Hemoglobin A1c fell from 7.2 % (2024-03-01) to 6.8 % (2024-09-01).",
                citations=["Observation/a1", "Observation/a2"],
            ),
            Statement(kind="notice", text="Nothing else was found."),
        ],
        citations={},
        confidence=0.9,
    )
    texts = {"DocumentReference/n1": "Ines Bergstrom seen 2024-09-01; A1c improving."}
    return Composed(body=body, evidence=evidence, texts=texts)


def test_evidence_numbered_with_refs_cited_first_and_capped() -> None:
    items = evidence_items(composed(), limit=2)
    assert [i.ref for i in items] == ["Observation/a1", "Observation/a2"]  # cited ones always
    items = evidence_items(composed(), limit=10)
    assert [i.number for i in items] == [1, 2, 3]
    assert items[2].line.startswith("ref=DocumentReference/n1 | DocumentReference")
    assert "text: Ines Bergstrom" in items[2].line


def test_prompt_is_tokenized_and_the_fake_reads_it_back() -> None:
    c = composed()
    items = evidence_items(c, 10)
    vault = PhiVault.for_request(PATIENT, [], rng=random.Random(2))
    user = user_message(tokenize(vault, prompt_texts("How is Ines's A1c?", c, items), None))
    assert "Ines" not in user and "Bergstrom" not in user and "2024-03-01" not in user
    assert "[PERSON_1]" in user
    # the fake's faithful answer is the checked fact with its items' refs, restorable
    [stmt] = faithful_statements(user, 8)
    assert stmt["evidence"] == ["Observation/a1", "Observation/a2"]
    kept, conf, dropped = restored_statements([stmt], vault)
    assert dropped == 0 and conf == [0.9]
    assert kept[0].text == c.body.statements[0].text  # dates shifted back exactly


def test_tool_output_parsed_and_malformed_output_refused() -> None:
    block = ToolUseBlock(
        type="tool_use",
        id="toolu_1",
        name=TOOL_NAME,
        input={"statements": [{"text": "x", "evidence": ["Observation/a1", 3], "confidence": 2}]},
    )
    [s] = tool_statements([block])
    assert s["evidence"] == ["Observation/a1"] and s["confidence"] == 2.0
    _, conf, _ = restored_statements([s], PhiVault())
    assert conf == [1.0]  # clamped
    with pytest.raises(ModelOutputError):
        tool_statements([TextBlock(type="text", text="no tool")])
    bad = ToolUseBlock(type="tool_use", id="t", name=TOOL_NAME, input={"statements": "x"})
    with pytest.raises(ModelOutputError):
        tool_statements([bad])


def test_unknown_placeholders_drop_the_statement() -> None:
    vault = PhiVault.for_request(PATIENT, [], rng=random.Random(2))
    vault.replace_known("Ines")
    raw = [
        {"text": "[PERSON_1] is stable", "evidence": ["Observation/a1"], "confidence": 0.8},
        {"text": "[PERSON_4] is stable", "evidence": ["Observation/a1"], "confidence": 0.8},
        {"text": "ok", "evidence": ["Observation/[ID_7]"], "confidence": 0.8},
    ]
    kept, _, dropped = restored_statements(raw, vault)
    assert [s.text for s in kept] == ["Ines is stable"] and dropped == 2


def test_payload_hash_is_of_canonical_json() -> None:
    assert payload_sha256({"b": 1, "a": [1, 2]}) == payload_sha256({"a": [1, 2], "b": 1})
    assert payload_sha256({"a": 1}) != payload_sha256({"a": 2})


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeAnthropic, str]]:
    f = FakeAnthropic(api_key="k")
    port = free_port()
    server = BackgroundServer(f.app, "127.0.0.1", port)  # type: ignore[arg-type]
    server.start()
    yield f, f"http://127.0.0.1:{port}"
    server.stop()


USER = (
    "Question: a1c?\n\nEvidence:\n[1] ref=Observation/a1 | Observation | date 2024-03-01 | A1c\n"
    "\nChecked facts:\n- A1c 7.2 % (items [1])"
)


def _generate(
    url: str, **config: object
) -> tuple[list[dict[str, object]] | None, CallRecord, float]:
    async def run() -> tuple[list[dict[str, object]] | None, CallRecord, float]:
        answerer = LlmAnswerer(LlmConfig(api_key="k", base_url=url, **config), None)  # type: ignore[arg-type]
        record = CallRecord("m", "h", 0)
        started = time.monotonic()
        try:
            return (
                await answerer.generate(answerer.request(SYSTEM, USER), record),
                record,
                time.monotonic() - started,
            )
        except Exception:  # noqa: BLE001 - the record says what failed
            return None, record, time.monotonic() - started
        finally:
            await answerer.close()

    return asyncio.run(run())


@pytest.mark.parametrize("stream", [True, False])
def test_sdk_against_the_fake_both_wire_formats(
    fake: tuple[FakeAnthropic, str], stream: bool
) -> None:
    f, url = fake
    f.configure(mode="faithful")
    f.clear()
    raw, record, _ = _generate(url, stream=stream)
    assert raw == [{"text": "A1c 7.2 %", "evidence": ["Observation/a1"], "confidence": 0.9}]
    assert record.outcome == "ok" and record.input_tokens > 0 and record.output_tokens > 0
    [req] = f.requests
    assert req.stream is stream
    assert req.body["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
    assert "temperature" not in req.body  # unset: not sent


def test_retries_on_429_then_succeeds(fake: tuple[FakeAnthropic, str]) -> None:
    f, url = fake
    f.configure(mode="error", error_status=429, fail_first=2)
    f.clear()
    raw, record, _ = _generate(url, max_retries=2)
    assert raw is not None and record.outcome == "ok"
    assert [r.status for r in f.requests] == [429, 429, 200]


def test_529_exhausts_the_retries(fake: tuple[FakeAnthropic, str]) -> None:
    f, url = fake
    f.configure(mode="error", error_status=529)
    f.clear()
    raw, record, _ = _generate(url, max_retries=1)
    assert raw is None and record.outcome == "http_529" and len(f.requests) == 2


@pytest.mark.parametrize("stream", [True, False])
def test_a_stalled_model_times_out(fake: tuple[FakeAnthropic, str], stream: bool) -> None:
    f, url = fake
    f.configure(mode="stall", stall_seconds=10)
    f.clear()
    raw, record, elapsed = _generate(url, timeout_seconds=1.0, stream=stream, max_retries=0)
    assert raw is None and record.outcome == "timeout"
    assert elapsed < 5
    deadline = time.monotonic() + 5
    while not f.requests[0].disconnected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f.requests[0].disconnected  # the call was abandoned, not left running
