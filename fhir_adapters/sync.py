"""Pull one patient's compartment into the store, then reconcile the derived rows with the raw ones.

Fetch: ``Patient/$everything`` when the server offers it, else one search per readable type; an
incremental pull asks only for what changed (``_since`` / ``_lastUpdated``). Each page is one transaction: its raw
resources and the facts that can be projected from the page alone, so a crash never leaves a page
half stored. A search whose pages hold fewer matches than its ``Bundle.total`` is an error of that
type; the other types go on. A type the access filter restricts by category is searched with
``category=`` and, since servers may ignore it (and ``$everything`` has no such parameter), every
returned resource the filter would hide is dropped unstored.

Reconcile (``reconcile``): whatever happened to earlier runs, the facts are rebuilt from the raw
store: every raw clinical resource whose fact is missing, from another version (``source_hash``), or
known to be incomplete is projected again, reading the Medications and note Binaries it needs first.
Facts and chunks whose raw resource is gone are dropped. ``chartcite sync --repair`` runs it without
an EHR. Nothing here trusts an in-memory list of what changed.

A complete full pull also removes (tombstones) stored resources the EHR no longer returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_adapters import repository as repo
from fhir_adapters.access import AccessFilter
from fhir_adapters.client import FhirClient
from fhir_adapters.errors import FhirAdapterError, FhirNotFound, FhirTokenRejected
from fhir_adapters.normalize import (
    CLINICAL_TYPES,
    SUPPORT_TYPES,
    Fact,
    InvalidResource,
    canonical_json,
    content_hash,
    external_medication,
    project,
    ref_id,
    validate,
)
from fhir_adapters.notes import binary_ids
from fhir_adapters.validation import Validator

log = logging.getLogger(__name__)
Progress = Callable[[str, dict[str, int], int], Awaitable[None]]
_PATIENT_REFS = ("subject", "patient")
_BATCH = 500
#: Reconciled first, so questions about them are answerable before notes are read.
STRUCTURED_TYPES = CLINICAL_TYPES - {"DocumentReference"}
_DEP_READS = 4  # concurrent Medication/Binary reads
#: A checked page: content hashes, validation verdicts of the new versions, canonical JSON texts.
_Checked = tuple[list[str], dict[int, str | None], list[str | None]]


@dataclass
class PullResult:
    counts: Counter[str] = field(default_factory=Counter)
    quarantined: int = 0
    #: Per resource type (or ``everything``/``Medication``/``Binary``): what went wrong.
    errors: dict[str, str] = field(default_factory=dict)
    tombstoned: list[tuple[str, str]] = field(default_factory=list)
    #: Milliseconds spent fetching (HTTP, validation, storage of pages) and reconciling.
    timings: dict[str, int] = field(default_factory=dict)


def belongs_to(resource: dict[str, Any], patient_id: str) -> bool:
    """Is this resource in the patient's compartment (by its subject/patient reference)?"""
    rtype = resource["resourceType"]
    if rtype == "Patient":
        return bool(resource["id"] == patient_id)
    if rtype in SUPPORT_TYPES:
        return True  # Medication/Binary are reached from the patient's own resources
    return any(ref_id(resource.get(k), "Patient") == patient_id for k in _PATIENT_REFS)


def _needs_lookup(resource: dict[str, Any], known: set[tuple[str, str]]) -> bool:
    """Does projecting this resource need a Medication/Binary that is not at hand?"""
    rtype = resource["resourceType"]
    if rtype == "MedicationRequest":
        mid = external_medication(resource)
        return mid is not None and ("Medication", mid) not in known
    if rtype == "DocumentReference":
        return any(("Binary", b) not in known for b in binary_ids(resource))
    return False


class Puller:
    """One pull of one patient: ``run`` fetches every page and reconciles the structured facts
    (then they are answerable); ``reconcile_notes`` reads and projects the notes."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: FhirClient | None,
        access: AccessFilter,
        sync_id: uuid.UUID,
        *,
        page_size: int = 200,
        progress: Progress | None = None,
        validator: Validator | None = None,
    ) -> None:
        self.engine = engine
        self.validator = validator or Validator(workers=0)
        self.client = client
        self.access = access
        self.sync_id = sync_id
        self.page_size = page_size
        self.progress = progress
        self.result = PullResult()
        self._seen: set[tuple[str, str]] = set()
        #: Content hashes stored when the fetch began: a page's version found here was validated
        #: when it was stored, so it is not validated again. Only that: what is stored, changed or
        #: not is decided by the upsert itself.
        self._known: dict[tuple[str, str], str] | None = None
        self._last: tuple[str, float] = ("", 0.0)
        self._trailing: asyncio.Task[None] | None = None

    async def run(self, *, since: datetime | None = None) -> PullResult:
        started = time.perf_counter()
        complete = await self.fetch(since=since)
        fetched = time.perf_counter()
        self.result.timings["ms_fetch"] = round((fetched - started) * 1000)
        if since is None and complete:
            async with self.engine.begin() as conn:
                self.result.tombstoned = await repo.tombstone(
                    conn, self.access, complete, self._seen
                )
            self.result.counts["tombstoned"] = len(self.result.tombstoned)
        await self._report("normalizing")
        await reconcile(
            self.engine,
            self.access,
            self.client,
            self.result,
            types=STRUCTURED_TYPES,
            sync_id=self.sync_id,
            orphans=False,
        )
        self.result.timings["ms_reconcile"] = round((time.perf_counter() - fetched) * 1000)
        return self.result

    async def reconcile_all(self) -> PullResult:
        """Reconcile every type at once (imports and repairs: nothing to answer early)."""
        await reconcile(self.engine, self.access, self.client, self.result, sync_id=self.sync_id)
        return self.result

    async def reconcile_notes(self) -> PullResult:
        """Second step: notes (reading their Binaries), then orphaned derived rows."""
        started = time.perf_counter()
        await reconcile(
            self.engine,
            self.access,
            self.client,
            self.result,
            types=frozenset({"DocumentReference"}),
            sync_id=self.sync_id,
            orphans=True,
        )
        self.result.timings["ms_notes"] = round((time.perf_counter() - started) * 1000)
        return self.result

    async def fetch(self, *, since: datetime | None = None) -> set[str]:
        """Fetch and store every page; returns the types that were read completely."""
        if self.client is None:
            raise ValueError("fetching needs a FHIR client")
        client = self.client
        pid = self.access.patient_id
        caps = await client.capabilities()
        async with self.engine.connect() as conn:
            self._known = await repo.stored_hashes(conn, self.access)
        wanted = (CLINICAL_TYPES | {"Patient"}) & self.access.resource_types
        if FhirClient.supports_everything(caps):
            params: dict[str, Any] = {"_count": self.page_size}
            if since is not None:
                params["_since"] = since.isoformat()
            try:
                if await self._source("everything", f"Patient/{pid}/$everything", params):
                    return set(wanted)
                return set()
            except FhirNotFound:
                self.result.errors.pop("everything", None)  # advertised but absent: search instead
        complete: set[str] = set()
        if self.access.allows("Patient"):
            try:
                patient = await client.read("Patient", pid)
            except FhirTokenRejected:
                raise
            except FhirAdapterError as exc:
                self.result.errors["Patient"] = exc.message
            else:
                if patient is not None:
                    await self.ingest([patient])
                    complete.add("Patient")
        for rtype in sorted(wanted - {"Patient"}):
            params = {"patient": pid, "_count": self.page_size}
            if (codings := self.access.restricted(rtype)) is not None:
                params["category"] = category_param(codings)
            if since is not None:
                params["_lastUpdated"] = f"gt{since.isoformat()}"
            if await self._source(rtype, rtype, params):
                complete.add(rtype)
        return complete

    async def _source(self, key: str, path: str, params: dict[str, Any]) -> bool:
        """Store every page of one search; ``False`` (with the error recorded) if it broke off."""
        try:
            await self._pipeline(path, params)
        except FhirNotFound:
            if key == "everything":
                raise
            self.result.errors[key] = "the EHR does not support this search (404)"
            return False
        except FhirTokenRejected:
            raise
        except FhirAdapterError as exc:
            self.result.errors[key] = exc.message
            return False
        return True

    async def _pipeline(self, path: str, params: dict[str, Any]) -> None:
        """Fetch, check and store the pages of one search, overlapped; pages commit in order.

        The client fetches page k+2 while page k+1 is checked and page k is stored. A page's check
        starts as soon as it arrives, so its validation waits in the worker's queue behind the
        previous page's instead of the worker idling between pages (measured: a third of the
        worker's time was such gaps). Every page that arrived is stored, even when a later one
        fails: the error is raised after them.
        """
        checking: deque[tuple[list[Any], asyncio.Task[_Checked]]] = deque()
        storing: asyncio.Task[None] | None = None

        async def store_next() -> None:
            nonlocal storing
            page, check = checking.popleft()
            checked = await check
            if storing is not None:
                await storing
            storing = asyncio.create_task(self._store(page, *checked))

        assert self.client is not None
        try:
            try:
                async with aclosing(self.client.pages(path, params)) as pages:
                    async for page in pages:
                        checking.append((page, asyncio.create_task(self._check(page))))
                        if len(checking) > 1:
                            await store_next()
            except FhirAdapterError:
                while checking:  # what arrived is stored before the error is reported
                    await store_next()
                raise
            while checking:
                await store_next()
        finally:
            for _, check in checking:
                check.cancel()
            await asyncio.gather(*(c for _, c in checking), return_exceptions=True)
            if storing is not None:
                await storing

    def _wanted(self, resource: Any) -> bool:
        """Is this a resource the sync stores for this session (others are skipped unvalidated)?

        Of a type restricted by category, only the matching ones: the EHR may ignore the search's
        ``category`` (and ``$everything`` has none), so what the filter would hide is not stored.
        """
        if not isinstance(resource, dict):
            return False
        rtype = resource.get("resourceType")
        return rtype in SUPPORT_TYPES or (rtype in CLINICAL_TYPES and self.access.admits(resource))

    async def ingest(self, page: list[Any]) -> None:
        """Check and store one page (resources read one by one)."""
        await self._store(page, *await self._check(page))

    async def _check(self, page: list[Any]) -> _Checked:
        """Content hashes, and the validation verdict of every resource not already stored."""
        known = self._known
        if known is None:
            keys = [
                (r["resourceType"], r["id"])
                for r in page
                if isinstance(r, dict)
                and isinstance(r.get("resourceType"), str)
                and isinstance(r.get("id"), str)
            ]
            async with self.engine.connect() as conn:
                known = await repo.stored_hashes(conn, self.access, keys)
        texts = [canonical_json(r) if isinstance(r, dict) else None for r in page]
        digests = [
            content_hash(r, t) if t is not None else "" for r, t in zip(page, texts, strict=True)
        ]
        # A version already stored was validated when it was stored: only new content is.
        fresh = [
            i
            for i, r in enumerate(page)
            if not isinstance(r, dict)
            or (
                self._wanted(r) and known.get((r.get("resourceType"), r.get("id"))) != digests[i]  # type: ignore[arg-type]
            )
        ]
        verdicts = dict(
            zip(
                fresh,
                await self.validator.check([page[i] for i in fresh], [texts[i] for i in fresh]),
                strict=True,
            )
        )
        return digests, verdicts, texts

    async def _store(
        self,
        page: list[Any],
        digests: list[str],
        verdicts: dict[int, str | None],
        texts: list[str | None],
    ) -> None:
        """Store one checked page and the facts it alone is enough for, in one transaction."""
        good: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        json_of: dict[tuple[str, str], str] = {}
        async with self.engine.begin() as conn:
            for i, resource in enumerate(page):
                if (reason := verdicts.get(i)) is not None:
                    await self._quarantine(conn, resource, reason)
                    continue
                digest = digests[i]
                rtype = resource.get("resourceType")
                if not self._wanted(resource):
                    self.result.counts["skipped"] += 1
                    continue
                assert isinstance(rtype, str)
                if not belongs_to(resource, self.access.patient_id):
                    await self._quarantine(
                        conn, resource, "outside the launched patient's compartment"
                    )
                    continue
                good[(rtype, resource["id"])] = (resource, digest)
                if (text := texts[i]) is not None:
                    json_of[(rtype, resource["id"])] = text
            outcome = await repo.store_resources(conn, self.access, list(good.values()), json_of)
            self._seen.update(good)
            for rtype, _ in good:
                self.result.counts[rtype] += 1
            changed = {k: good[k] for k, o in outcome.items() if o != "same"}
            await repo.invalidate_dependents(
                conn,
                self.access,
                medications=[i for t, i in changed if t == "Medication"],
                binaries=[i for t, i in changed if t == "Binary"],
            )
            at_hand = {k for k in good if k[0] in SUPPORT_TYPES}
            medications = {i: good[("Medication", i)][0] for t, i in at_hand if t == "Medication"}
            binaries = {i: good[("Binary", i)][0] for t, i in at_hand if t == "Binary"}
            facts = []
            for (rtype, _), (resource, digest) in changed.items():
                if rtype in CLINICAL_TYPES and not _needs_lookup(resource, at_hand):
                    fact = _project(resource, digest, medications, binaries)
                    if fact is not None:
                        facts.append(fact)
            await repo.store_facts(conn, self.access, facts)
        self.result.counts["projected"] += len(facts)
        await self._report("fetching")

    async def _quarantine(self, conn: Any, resource: Any, reason: str) -> None:
        self.result.quarantined += 1
        if isinstance(resource, dict) and isinstance(resource.get("id"), str):
            self._seen.add((str(resource.get("resourceType")), resource["id"]))
        await repo.quarantine(
            conn, self.access, sync_id=self.sync_id, resource=resource, reason=reason
        )

    async def _report(self, phase: str) -> None:
        """Progress, at most four times a second within a phase (each report is a write).

        A report held back by that limit is written when the quarter second is over, so the
        counts shown never lag behind what is stored (a stalled page must not hide the page
        before it)."""
        if self.progress is None:
            return
        now = time.monotonic()
        if phase == self._last[0] and now - self._last[1] < 0.25:
            if self._trailing is None or self._trailing.done():
                delay = 0.25 - (now - self._last[1])
                self._trailing = asyncio.create_task(self._report_later(phase, delay))
            return
        if self._trailing is not None and not self._trailing.done():
            self._trailing.cancel()
        self._last = (phase, now)
        await self.progress(phase, dict(self.result.counts), self.result.quarantined)

    async def _report_later(self, phase: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._last[0] == phase:  # a later phase has not begun
            self._last = (phase, time.monotonic())
            await self.progress(phase, dict(self.result.counts), self.result.quarantined)  # type: ignore[misc]


def category_param(codings: Iterable[tuple[str | None, str]]) -> str:
    """The FHIR token search value for a category restriction: ``system|code`` or ``code``, OR-ed
    with commas (FHIR R4 search §3.1.1.4.3 token, §3.1.1.2 OR); a comma in a code is escaped."""
    return ",".join(
        sorted(
            (f"{system}|{code}" if system else code).replace(",", "\\,") for system, code in codings
        )
    )


def _project(
    resource: dict[str, Any],
    digest: str,
    medications: dict[str, dict[str, Any]],
    binaries: dict[str, dict[str, Any]],
) -> Fact | None:
    fact = project(resource, medications=medications, binaries=binaries)
    if fact is not None:
        fact.source_hash = digest
    return fact


async def reconcile(
    engine: AsyncEngine,
    access: AccessFilter,
    client: FhirClient | None,
    result: PullResult,
    *,
    types: frozenset[str] = CLINICAL_TYPES,
    sync_id: uuid.UUID | None = None,
    orphans: bool = True,
) -> None:
    """Rebuild every fact of ``types`` that is missing, stale or incomplete from the raw store.

    With a ``client``, Medications and note Binaries that are not stored are read from the EHR
    first; without one (``--repair`` offline) what is stored is all there is. ``orphans`` also
    drops facts and chunks whose raw resource is gone.
    """
    support = access.widened_for_support(SUPPORT_TYPES)
    async with engine.connect() as conn:
        stale = await repo.stale_resources(conn, access, types)
    for i in range(0, len(stale), _BATCH):
        async with engine.connect() as conn:
            items = await repo.get_resources_by_key(conn, access, stale[i : i + _BATCH])
            med_ids = {m for r, _ in items if (m := external_medication(r))}
            bin_ids = {b for r, _ in items for b in binary_ids(r)}
            medications = await repo.get_resources_by_id(conn, support, "Medication", med_ids)
            binaries = await repo.get_resources_by_id(conn, support, "Binary", bin_ids)
        if client is not None:
            medications |= await _read_missing(
                engine, access, client, result, "Medication", med_ids - medications.keys(), sync_id
            )
            binaries |= await _read_missing(
                engine, access, client, result, "Binary", bin_ids - binaries.keys(), sync_id
            )
        facts = [
            f
            for r, digest in items
            if (f := _project(r, digest, medications, binaries)) is not None
        ]
        async with engine.begin() as conn:
            await repo.store_facts(conn, access, facts)
        result.counts["projected"] += len(facts)
    if not orphans:
        return
    async with engine.begin() as conn:
        removed_facts, removed_chunks = await repo.delete_orphans(conn, access)
    if removed_facts or removed_chunks:
        result.counts["removed_facts"] += removed_facts
        result.counts["removed_chunks"] += removed_chunks


async def _read_missing(
    engine: AsyncEngine,
    access: AccessFilter,
    client: FhirClient,
    result: PullResult,
    rtype: str,
    ids: Iterable[str],
    sync_id: uuid.UUID | None,
) -> dict[str, dict[str, Any]]:
    """Read Medications/Binaries by id (a few at a time) and store the valid ones."""
    wanted = sorted(ids)
    if not wanted:
        return {}
    gate = asyncio.Semaphore(_DEP_READS)
    failures: Counter[str] = Counter()

    async def one(rid: str) -> dict[str, Any] | None:
        async with gate:
            try:
                resource = await client.read(rtype, rid)
            except FhirTokenRejected:
                raise
            except FhirAdapterError as exc:
                failures[exc.message] += 1
                return None
        if resource is None:
            failures["not found (404)"] += 1
            return None
        try:
            validate(resource)
        except InvalidResource:
            failures["invalid"] += 1
            return None
        if resource.get("resourceType") != rtype or resource.get("id") != rid:
            failures["the EHR answered with another resource"] += 1
            return None
        return resource

    got = [r for r in await asyncio.gather(*(one(i) for i in wanted)) if r is not None]
    if got:
        async with engine.begin() as conn:
            await repo.store_resources(
                conn, access.widened_for_support(SUPPORT_TYPES), [(r, content_hash(r)) for r in got]
            )
        result.counts[rtype] += len(got)
    if failures:
        reason, _ = failures.most_common(1)[0]
        result.errors[rtype] = (
            f"{sum(failures.values())} of {len(wanted)} could not be read ({reason})"
        )
    return {r["id"]: r for r in got}
