"""Bulk Data Access (FHIR Bulk Data IG 2.0, "Export"): ``$export`` with a status URL and NDJSON files.

- Kick-off ``GET {fhir}/$export`` or ``{fhir}/Patient/$export`` (``Prefer: respond-async`` required;
  ``_type``, ``_since``, ``_outputFormat`` of NDJSON only): 202 with ``Content-Location`` naming the
  status URL. The token must carry ``system/`` (or ``user/``) scopes and no patient context; the
  export holds the types those scopes allow to read.
- Status ``GET {fhir}/$export-status/{job}``: 202 with ``Retry-After`` and ``X-Progress`` for the first
  ``polls`` requests, then 200 with the manifest (``transactionTime``, ``request``,
  ``requiresAccessToken: true``, ``output: [{type, url, count}]``, ``error: []``);
  ``DELETE`` cancels (202), after which the status is 404.
- Files ``GET {fhir}/$export-file/{job}/{Type}.ndjson`` (bearer token again), one resource per line,
  streamed as ``application/fhir+ndjson``.

The export is a snapshot taken at kick-off. Jobs live in memory.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from launch.sandbox.access import TokenAccess
from launch.sandbox.errors import BadRequest, Forbidden, NotFound
from launch.sandbox.search_params import date_matches
from launch.sandbox.store import Resource, SandboxStore

NDJSON_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})


@dataclass
class ExportJob:
    id: str
    request: str
    transaction_time: str
    files: dict[str, list[Resource]]
    polls_left: int
    client_id: str | None
    cancelled: bool = False
    started: float = field(default_factory=time.monotonic)


class BulkExport:
    """The sandbox's ``$export`` jobs over a ``SandboxStore``."""

    def __init__(self, store: SandboxStore, fhir_base: str, *, polls: int = 2) -> None:
        self.store = store
        self.fhir_base = fhir_base
        self.polls = polls
        self.jobs: dict[str, ExportJob] = {}

    def kick_off(self, request: Request, token: TokenAccess, scope_patients: bool) -> Response:
        if token.patient is not None:
            raise Forbidden(
                "Bulk export needs a system- or user-level token, not a patient context.",
                code="scope_denied",
            )
        if "respond-async" not in request.headers.get("prefer", ""):
            raise BadRequest(
                "Bulk export requires 'Prefer: respond-async'.", code="invalid_request"
            )
        query = dict(request.query_params)
        fmt = query.get("_outputFormat")
        if fmt is not None and fmt not in NDJSON_FORMATS:
            raise BadRequest("Only NDJSON output is supported.", code="invalid_request")
        types = sorted(t for t in self.store.types() if token.allows(t, "read"))
        if query.get("_type"):
            wanted = {t.strip() for t in query["_type"].split(",")}
            types = [t for t in types if t in wanted]
        if not types:
            raise Forbidden("The granted scopes allow no resource type.", code="scope_denied")
        since = query.get("_since")
        files: dict[str, list[Resource]] = {}
        for rtype in types:
            rows = [
                r
                for r in self.store.of_type(rtype)
                if not scope_patients
                or rtype in ("Patient", "Medication", "Binary")
                or self.store.compartment_owner(rtype, r["id"]) is not None
            ]
            if since:
                rows = [r for r in rows if date_matches(_last_updated(r), f"ge{since}")]
            if rows:
                files[rtype] = rows
        job = ExportJob(
            id=secrets.token_urlsafe(12),
            request=str(request.url),
            transaction_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            files=files,
            polls_left=self.polls,
            client_id=token.client_id,
        )
        self.jobs[job.id] = job
        return Response(
            status_code=202,
            headers={"Content-Location": f"{self.fhir_base}/$export-status/{job.id}"},
        )

    def _job(self, job_id: str, token: TokenAccess) -> ExportJob:
        job = self.jobs.get(job_id)
        if job is None or job.cancelled:
            raise NotFound("No such export job.")
        if job.client_id != token.client_id:
            raise Forbidden("The export belongs to another client.", code="client_mismatch")
        return job

    def status(self, job_id: str, token: TokenAccess) -> Response:
        job = self._job(job_id, token)
        if job.polls_left > 0:
            job.polls_left -= 1
            done = self.polls - job.polls_left
            return Response(
                status_code=202,
                headers={"Retry-After": "1", "X-Progress": f"step {done} of {self.polls + 1}"},
            )
        return JSONResponse(
            {
                "transactionTime": job.transaction_time,
                "request": job.request,
                "requiresAccessToken": True,
                "output": [
                    {
                        "type": rtype,
                        "url": f"{self.fhir_base}/$export-file/{job.id}/{rtype}.ndjson",
                        "count": len(rows),
                    }
                    for rtype, rows in sorted(job.files.items())
                ],
                "error": [],
            }
        )

    def cancel(self, job_id: str, token: TokenAccess) -> Response:
        self._job(job_id, token).cancelled = True
        return Response(status_code=202)

    def file(self, job_id: str, name: str, token: TokenAccess) -> Response:
        job = self._job(job_id, token)
        rtype = name.removesuffix(".ndjson")
        if not name.endswith(".ndjson") or rtype not in job.files:
            raise NotFound("No such export file.")
        rows = job.files[rtype]

        def lines() -> Iterator[bytes]:
            for r in rows:
                yield (json.dumps(r, separators=(",", ":")) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/fhir+ndjson")


def _last_updated(resource: Resource) -> str | None:
    meta: Any = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None
