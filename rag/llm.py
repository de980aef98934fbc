"""Answers written by Claude through the Anthropic Messages API with tool use
(https://docs.anthropic.com/en/api/messages, https://docs.anthropic.com/en/docs/build-with-claude/tool-use):
the one module that imports ``anthropic``.

The extractive answer is composed first (``rag.ask.compose_answer``); its retrieval set becomes
numbered evidence items carrying their resource refs. Question, evidence and the checked
extractive facts are PHI-tokenized (``rag.phi``) before the call; the model answers only through
the ``record_answer`` tool (statements, each with the refs it rests on and a confidence); the
placeholders and dates are restored, and every statement goes through the citation validator
(DESIGN.md step 6). More than half dropped: regenerate once, then the extractive answer. Any
failure of the model (timeout, 429/529/5xx after the SDK's retries, malformed output) gives the
extractive answer with a warning notice; nothing relevant retrieved: no call at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anthropic
import httpx2
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhir_adapters import AccessFilter, existing_refs, get_resource, get_resources
from fhir_adapters.repository import get_resources_by_id
from rag import repository as repo
from rag.answer import AnswerBody, Statement
from rag.ask import Composed, compose_answer
from rag.citations import cited_refs, parse_ref, validate_statements
from rag.embeddings import Embedder
from rag.phi import PhiDetector, PhiVault, tokenize

TOOL_NAME = "record_answer"
TOOL: dict[str, Any] = {
    "name": TOOL_NAME,
    "description": "Record the answer to the clinician's question: statements drawn only from "
    "the numbered evidence, each citing the refs of the evidence items it rests on.",
    "input_schema": {
        "type": "object",
        "required": ["statements"],
        "properties": {
            "statements": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["text", "evidence", "confidence"],
                    "properties": {
                        "text": {"type": "string", "description": "one statement of fact"},
                        "evidence": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "refs (ResourceType/id) of the evidence items, "
                            "exactly as written after ref=",
                        },
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            }
        },
    },
}
SYSTEM = (
    "You answer a clinician's question about one patient from numbered evidence items taken "
    "from the patient's chart. Use only the evidence. Each statement cites, in 'evidence', the "
    "ref of every item it rests on, copied exactly as written after 'ref='. Bracketed "
    "placeholders such as [PERSON_1] stand for redacted identifiers: copy them verbatim and "
    "never guess what they hide. Keep dates and values exactly as given. The checked facts are "
    "correct statements already drawn from the evidence: you may rephrase them for a clinician, "
    "keeping their refs. Say nothing the evidence does not support. Answer by calling the "
    f"{TOOL_NAME} tool once."
)
RETRY_NOTE = (
    "Your previous answer cited refs that are not evidence items. Cite only refs written after "
    "'ref=' in the evidence list."
)


@dataclass(frozen=True)
class LlmConfig:
    """How chartcite calls the model (``launch.settings`` maps ``CHARTCITE_LLM_*`` onto it)."""

    api_key: str = field(repr=False)
    base_url: str | None = None
    model: str = "claude-sonnet-4-5"
    max_tokens: int = 2048
    timeout_seconds: float = 20.0
    """The longest a clinician waits on the model, retries included."""
    temperature: float | None = None
    """Sent only when set: anthropic 2.x has no ``temperature`` argument (newer models fix their
    sampling), so it goes as an extra body field for the models and gateways that take it."""
    max_retries: int = 2
    """Retries of 408/409/429/5xx/529 and connection errors (the SDK's exponential backoff,
    honouring ``retry-after``)."""
    shift_dates: bool = True
    max_evidence: int = 80
    stream: bool = True
    """Call with ``stream: true`` (Server-Sent Events); the answer is validated whole either way."""
    input_usd_per_mtok: float = 3.0
    output_usd_per_mtok: float = 15.0


@dataclass(frozen=True)
class EvidenceItem:
    number: int
    ref: str
    line: str
    """What the model reads about the item (before tokenization)."""


@dataclass
class CallRecord:
    """One model call, as the audit keeps it: never the payload, only its hash and counts."""

    model: str
    payload_sha256: str
    identifiers_replaced: int
    outcome: str = "ok"
    input_tokens: int = 0
    output_tokens: int = 0
    statements: int = 0
    dropped: int = 0
    latency_ms: float = 0.0

    def audit(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "payload_sha256": self.payload_sha256,
            "identifiers_replaced": self.identifiers_replaced,
            "llm_outcome": self.outcome,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
            "model_statements": self.statements,
            "dropped_statements": self.dropped,
            "llm_latency_ms": self.latency_ms,
        }


@dataclass
class LlmAnswer:
    """The stored answer (``mode`` llm, or extractive after a fallback) and what it cost."""

    body: AnswerBody
    calls: list[CallRecord] = field(default_factory=list)
    fallback: str | None = None
    """Why the extractive answer was returned instead (``None``: the model's answer, or no call
    was needed)."""
    gated: bool = False
    """Nothing relevant was retrieved: the model was not called."""
    cost_usd: float = 0.0

    @property
    def usage(self) -> dict[str, int]:
        return {
            "input_tokens": sum(c.input_tokens for c in self.calls),
            "output_tokens": sum(c.output_tokens for c in self.calls),
        }


class ModelOutputError(Exception):
    """The model answered without a usable ``record_answer`` tool call."""


# -- evidence and prompt (pure) ------------------------------------------------------------------


def evidence_items(composed: Composed, limit: int) -> list[EvidenceItem]:
    """The retrieval set as numbered items: everything the extractive facts cite first, then the
    other retrieved resources, up to ``limit`` (never fewer than the cited ones)."""
    cited = [c for s in composed.body.statements for c in s.citations]
    order = list(dict.fromkeys([*cited, *sorted(composed.evidence)]))
    order = order[: max(limit, len(set(cited)))]
    items = []
    for n, ref in enumerate(order, 1):
        info = composed.evidence.get(ref)
        if info is None:
            continue
        parts = [f"ref={ref}", info.resource_type]
        if info.date:
            parts.append(f"date {info.date}")
        if info.display:
            parts.append(info.display)
        if info.value:
            parts.append(f"value {info.value}")
        line = " | ".join(parts)
        text = composed.texts.get(ref)
        if text:
            line += "\n    text: " + " ".join(text.split())
        items.append(EvidenceItem(n, ref, line))
    return items


def prompt_texts(question: str, composed: Composed, items: Sequence[EvidenceItem]) -> list[str]:
    """The user message's parts before tokenization: question, evidence lines, checked facts."""
    number = {i.ref: i.number for i in items}
    facts = []
    for s in composed.body.statements:
        if s.kind == "fact" and s.citations and all(c in number for c in s.citations):
            refs = ", ".join(f"[{number[c]}]" for c in s.citations)
            facts.append(f"- {s.text} (items {refs})")
    return [question, *(f"[{i.number}] {i.line}" for i in items), "\n".join(facts)]


def user_message(tokenized: Sequence[str]) -> str:
    question, *rest = tokenized
    evidence, facts = rest[:-1], rest[-1]
    text = f"Question: {question}\n\nEvidence:\n" + "\n".join(evidence)
    if facts:
        text += "\n\nChecked facts:\n" + facts
    return text


def payload_sha256(payload: dict[str, Any]) -> str:
    """SHA-256 of the outbound request body as canonical JSON (what the audit keeps)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def tool_statements(content: Sequence[Any]) -> list[dict[str, Any]]:
    """The ``record_answer`` statements of a response's content blocks (``ModelOutputError``
    when there is no such call or its shape is wrong)."""
    for block in content:
        if getattr(block, "type", None) == "tool_use" and getattr(block, "name", None) == TOOL_NAME:
            data = block.input
            if not isinstance(data, dict) or not isinstance(data.get("statements"), list):
                raise ModelOutputError("record_answer without a statements list")
            out = []
            for s in data["statements"]:
                if not isinstance(s, dict) or not isinstance(s.get("text"), str):
                    raise ModelOutputError("a statement without text")
                refs = s.get("evidence") if isinstance(s.get("evidence"), list) else []
                conf = s.get("confidence")
                out.append(
                    {
                        "text": s["text"],
                        "evidence": [r for r in refs if isinstance(r, str)],
                        "confidence": float(conf) if isinstance(conf, int | float) else 0.5,
                    }
                )
            return out
    raise ModelOutputError("no record_answer tool call")


def restored_statements(
    raw: Sequence[dict[str, Any]], vault: PhiVault
) -> tuple[list[Statement], list[float], int]:
    """Placeholders and dates put back; a statement holding a placeholder the vault does not
    know is dropped (counted), never shown."""
    kept: list[Statement] = []
    confidences: list[float] = []
    dropped = 0
    for s in raw:
        text = vault.restore(s["text"])
        refs = [vault.restore(r.strip()) for r in s["evidence"]]
        if text is None or not text.strip() or any(r is None for r in refs):
            dropped += 1
            continue
        kept.append(Statement(text=text.strip(), citations=[r for r in refs if r]))
        confidences.append(min(1.0, max(0.0, s["confidence"])))
    return kept, confidences, dropped


def fallback_notice(reason: str) -> Statement:
    """The warning an extractive fallback carries (a reason code, never model text)."""
    return Statement(
        kind="notice",
        text=f"The language model could not be used ({reason}); this answer was composed "
        "directly from the chart.",
    )


# -- the client ----------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | anthropic.APITimeoutError):
        return "timeout"
    if isinstance(exc, anthropic.APIStatusError):
        return f"http_{exc.status_code}"
    if isinstance(exc, anthropic.APIConnectionError):
        return "connection"
    if isinstance(exc, ModelOutputError):
        return "malformed_output"
    return "error"


class LlmAnswerer:
    """Writes answers with Claude from tokenized evidence; one instance per app (one pool)."""

    def __init__(
        self,
        config: LlmConfig,
        detector: PhiDetector | None,
        *,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.detector = detector
        self._client = anthropic.AsyncAnthropic(
            api_key=config.api_key,
            base_url=config.base_url,
            timeout=config.timeout_seconds,
            max_retries=config.max_retries,
            http_client=http_client,
        )

    def __repr__(self) -> str:
        return f"LlmAnswerer(model={self.config.model!r})"

    async def close(self) -> None:
        await self._client.close()

    def request(self, system: str, user: str) -> dict[str, Any]:
        """The Messages API request body (without ``stream``)."""
        body: dict[str, Any] = {
            "model": self.config.model,
            "max_tokens": self.config.max_tokens,
            "system": system,
            "messages": [{"role": "user", "content": user}],
            "tools": [TOOL],
            "tool_choice": {"type": "tool", "name": TOOL_NAME},
        }
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        return body

    async def _call(self, payload: dict[str, Any]) -> Any:
        args = dict(payload)
        extra = {"temperature": args.pop("temperature")} if "temperature" in args else None
        if self.config.stream:
            async with self._client.messages.stream(**args, extra_body=extra) as stream:
                return await stream.get_final_message()
        return await self._client.messages.create(**args, extra_body=extra)

    async def generate(self, payload: dict[str, Any], record: CallRecord) -> list[dict[str, Any]]:
        """One model answer (with the SDK's retries) inside the overall timeout."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                message = await self._call(payload)
            usage = getattr(message, "usage", None)
            record.input_tokens = int(getattr(usage, "input_tokens", 0) or 0)
            record.output_tokens = int(getattr(usage, "output_tokens", 0) or 0)
            raw = tool_statements(message.content)
            record.statements = len(raw)
            return raw
        except Exception as exc:
            record.outcome = _reason(exc)
            raise
        finally:
            record.latency_ms = round((time.perf_counter() - started) * 1000, 1)

    def cost(self, calls: Sequence[CallRecord]) -> float:
        c = self.config
        return round(
            sum(
                r.input_tokens * c.input_usd_per_mtok + r.output_tokens * c.output_usd_per_mtok
                for r in calls
            )
            / 1e6,
            6,
        )

    async def answer(
        self,
        engine: AsyncEngine,
        embedder: Embedder,
        access: AccessFilter,
        question: str,
        *,
        now: datetime | None = None,
        chart_notice: str | None = None,
        on_evidence: Callable[[Composed], Awaitable[None]] | None = None,
        record: Callable[[AsyncConnection, LlmAnswer], Awaitable[None]] | None = None,
    ) -> LlmAnswer:
        """Compose, ask the model, validate, store (and ``record`` in the same transaction).

        No database connection is held while the model writes."""
        started = time.perf_counter()
        async with engine.connect() as conn:
            composed = await compose_answer(
                conn, embedder, access, question, now=now, chart_notice=chart_notice
            )
            known = await _known_resources(conn, access, composed)
        if on_evidence is not None:
            await on_evidence(composed)
        result = await self._write(engine, access, question, composed, known)
        result.body.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        result.cost_usd = self.cost(result.calls)
        async with engine.begin() as conn:
            await repo.save_answer(
                conn, access, uuid.UUID(result.body.answer_id), result.body.model_dump(mode="json")
            )
            if record is not None:
                await record(conn, result)
        return result

    async def _write(
        self,
        engine: AsyncEngine,
        access: AccessFilter,
        question: str,
        composed: Composed,
        known: list[dict[str, Any]],
    ) -> LlmAnswer:
        extractive = composed.body
        if not any(s.kind == "fact" for s in extractive.statements) or not composed.evidence:
            return LlmAnswer(body=extractive, gated=True)  # nothing relevant: no model call
        patient, resources = (known[0] if known else None), known[1:]
        vault = PhiVault.for_request(patient, resources, shift_dates=self.config.shift_dates)
        items = evidence_items(composed, self.config.max_evidence)
        texts = prompt_texts(question, composed, items)
        tokenized = await asyncio.to_thread(tokenize, vault, texts, self.detector)
        user = user_message(tokenized)
        retrieved = {i.ref for i in items}
        notices = [s for s in extractive.statements if s.kind == "notice"]
        calls: list[CallRecord] = []
        for attempt in range(2):
            payload = self.request(SYSTEM if attempt == 0 else SYSTEM + " " + RETRY_NOTE, user)
            call = CallRecord(
                model=self.config.model,
                payload_sha256=payload_sha256({**payload, "stream": self.config.stream}),
                identifiers_replaced=vault.replaced,
            )
            calls.append(call)
            try:
                raw = await self.generate(payload, call)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every model failure falls back
                return self._fallback(extractive, calls, _reason(exc))
            stmts, confidences, unresolved = restored_statements(raw, vault)
            async with engine.connect() as conn:
                stored = await existing_refs(conn, access, cited_refs(stmts))
            checked = validate_statements(
                stmts, retrieved=retrieved, stored=stored, allowed_types=access.resource_types
            )
            call.dropped = unresolved + checked.removed
            if checked.kept and call.dropped * 2 <= len(raw):
                kept_conf = [
                    c for s, c in zip(stmts, confidences, strict=True) if s in checked.kept
                ]
                cited = sorted({c for s in checked.kept for c in s.citations})
                body = extractive.model_copy(
                    update={
                        "mode": "llm",
                        "statements": [*checked.kept, *notices],
                        "citations": {c: composed.evidence[c] for c in cited},
                        "confidence": round(
                            min(extractive.confidence, sum(kept_conf) / len(kept_conf)), 3
                        ),
                        "removed_statements": call.dropped,
                    }
                )
                return LlmAnswer(body=body, calls=calls)
        return self._fallback(extractive, calls, "citations_rejected")

    def _fallback(self, extractive: AnswerBody, calls: list[CallRecord], reason: str) -> LlmAnswer:
        removed = sum(c.dropped for c in calls)
        body = extractive.model_copy(
            update={
                "statements": [*extractive.statements, fallback_notice(reason)],
                "removed_statements": extractive.removed_statements + removed,
            }
        )
        return LlmAnswer(body=body, calls=calls, fallback=reason)


async def _known_resources(
    conn: AsyncConnection, access: AccessFilter, composed: Composed
) -> list[dict[str, Any]]:
    """[Patient, related persons, the evidence resources]: where the known identifiers come from.

    Read for protection, not disclosure: the Patient and RelatedPerson resources are read even
    when the granted scopes do not show them (nothing of them reaches the caller)."""
    wide = AccessFilter(
        access.source,
        access.patient_id,
        frozenset({"Patient", "RelatedPerson"}),
    )
    patient = await get_resource(conn, wide, "Patient", access.patient_id)
    related = await get_resources(conn, wide, "RelatedPerson")
    by_type: dict[str, list[str]] = {}
    for ref in composed.evidence:
        parsed = parse_ref(ref)
        if parsed is not None and parsed[0] != "Patient":
            by_type.setdefault(parsed[0], []).append(parsed[1])
    resources: list[dict[str, Any]] = []
    for rtype, ids in sorted(by_type.items()):
        resources += (await get_resources_by_id(conn, access, rtype, ids)).values()
    return [patient or {}, *related, *resources]
