"""Pull one patient's compartment into the store: fetch, validate, quarantine, store, project.

Uses ``Patient/$everything`` when the server's CapabilityStatement offers it (and this is a full
sync), otherwise one search per readable type with ``_lastUpdated`` for incremental runs. Each page
is committed on its own so progress is visible and work done is kept if a later page fails.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_adapters import repository as repo
from fhir_adapters.access import AccessFilter
from fhir_adapters.client import FhirClient
from fhir_adapters.errors import FhirAuthError, FhirServerError
from fhir_adapters.normalize import (
    CLINICAL_TYPES,
    SUPPORT_TYPES,
    Fact,
    InvalidResource,
    content_hash,
    note_attachments,
    project,
    ref_id,
    validate,
)

log = logging.getLogger(__name__)
Progress = Callable[[str, dict[str, int], int], Awaitable[None]]
_PATIENT_REFS = ("subject", "patient")


@dataclass
class PullResult:
    counts: Counter[str] = field(default_factory=Counter)
    quarantined: int = 0
    changed: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def belongs_to(resource: dict[str, Any], patient_id: str) -> bool:
    """Is this resource in the patient's compartment (by its subject/patient reference)?"""
    rtype = resource["resourceType"]
    if rtype == "Patient":
        return bool(resource["id"] == patient_id)
    if rtype in SUPPORT_TYPES:
        return True  # Medication/Binary are reached from the patient's own resources
    return any(ref_id(resource.get(k), "Patient") == patient_id for k in _PATIENT_REFS)


class Puller:
    """One sync run of one patient."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: FhirClient,
        access: AccessFilter,
        sync_id: uuid.UUID,
        *,
        page_size: int = 200,
        progress: Progress | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.access = access
        self.sync_id = sync_id
        self.page_size = page_size
        self.progress = progress
        self.result = PullResult()
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}

    async def run(self, *, since: datetime | None = None) -> PullResult:
        pid = self.access.patient_id
        caps = await self.client.capabilities()
        if since is None and FhirClient.supports_everything(caps):
            await self._source(f"Patient/{pid}/$everything", {"_count": self.page_size})
        else:
            patient = (
                await self.client.read("Patient", pid) if self.access.allows("Patient") else None
            )
            if patient is not None:
                await self._ingest([patient])
            for rtype in sorted(CLINICAL_TYPES & self.access.resource_types):
                params: dict[str, Any] = {"patient": pid, "_count": self.page_size}
                if since is not None:
                    params["_lastUpdated"] = f"gt{since.isoformat()}"
                try:
                    await self._source(rtype, params)
                except FhirAuthError as exc:
                    self.result.errors.append(f"{rtype}: {exc.message}")
        await self._resolve_medications()
        await self._project()
        return self.result

    async def _source(self, path: str, params: dict[str, Any]) -> None:
        async for page in self.client.pages(path, params):
            await self._ingest(page)

    async def _ingest(self, page: list[dict[str, Any]]) -> None:
        good: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        async with self.engine.begin() as conn:
            for resource in page:
                try:
                    validate(resource)
                except InvalidResource as exc:
                    await self._quarantine(conn, resource, exc.reason)
                    continue
                rtype = resource["resourceType"]
                if rtype not in CLINICAL_TYPES | SUPPORT_TYPES:
                    self.result.counts["skipped"] += 1
                    continue
                if not self.access.allows(rtype) and rtype not in SUPPORT_TYPES:
                    self.result.counts["skipped"] += 1
                    continue
                if not belongs_to(resource, self.access.patient_id):
                    await self._quarantine(
                        conn, resource, "outside the launched patient's compartment"
                    )
                    continue
                good[(rtype, resource["id"])] = (resource, content_hash(resource))
            outcome = await repo.store_resources(conn, self.access, list(good.values()))
            for resource, _ in good.values():
                key = (resource["resourceType"], resource["id"])
                self.result.counts[key[0]] += 1
                if outcome[key] != "same":
                    self.result.changed.append(key)
                    self._pending[key] = resource
        await self._report("fetching")

    async def _quarantine(self, conn: Any, resource: Any, reason: str) -> None:
        self.result.quarantined += 1
        await repo.quarantine(
            conn,
            self.access,
            sync_id=self.sync_id,
            resource=resource,
            reason=reason,
        )

    async def _resolve_medications(self) -> None:
        """Read ``Medication`` resources that changed MedicationRequests point at."""
        async with self.engine.connect() as conn:
            stored = {
                r["id"]
                for r in await repo.get_resources(conn, self._support_access(), "Medication")
            }
        wanted = {
            mid
            for (rtype, _), r in self._pending.items()
            if rtype == "MedicationRequest"
            and (mid := ref_id(r.get("medicationReference"), "Medication"))
            and mid not in stored
        }
        for mid in sorted(wanted):
            try:
                med = await self.client.read("Medication", mid)
            except FhirAuthError:
                med = None
            if med is not None:
                await self._ingest([med])

    def _support_access(self) -> AccessFilter:
        return self.access.widened_for_support(SUPPORT_TYPES)

    async def _project(self) -> None:
        """Project changed clinical resources to facts (notes need their attachment text)."""
        await self._report("normalizing")
        async with self.engine.connect() as conn:
            medications = {
                m["id"]: m
                for m in await repo.get_resources(conn, self._support_access(), "Medication")
            }
        facts: list[Fact] = []
        for (rtype, _), resource in self._pending.items():
            if rtype not in CLINICAL_TYPES:
                continue
            text = None
            if rtype == "DocumentReference":
                parts = []
                for att in note_attachments(resource):
                    try:
                        part = await self.client.attachment_text(att)
                    except (FhirAuthError, FhirServerError):
                        part = None
                    if part:
                        parts.append(part)
                text = "\n\n".join(parts) or None
                if text is None:
                    self.result.counts["notes_without_text"] += 1
            fact = project(resource, medications=medications, note_text=text)
            if fact is not None:
                facts.append(fact)
        async with self.engine.begin() as conn:
            for i in range(0, len(facts), 500):
                await repo.store_facts(conn, self.access, facts[i : i + 500])

    async def _report(self, phase: str) -> None:
        if self.progress is not None:
            await self.progress(phase, dict(self.result.counts), self.result.quarantined)
