"""``chartcite sync --bulk --iss URL``: a population sync by Bulk Data export, then an import.

1. Discover the EHR (``.well-known/smart-configuration``) and get a system-level token with the
   client-credentials grant as ``bulk_client_id`` (scopes ``system/*.read`` by default).
2. Kick off ``Patient/$export``, poll its status URL honouring ``Retry-After``, showing progress.
3. Stream every NDJSON file to a temporary folder (complete lines only), then load it with the same
   pipeline as ``chartcite import`` under the EHR's source, so launches from it find the charts.

The token is used only on the EHR's FHIR base and never printed; the folder is deleted afterwards.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2

from fhir_adapters.bulk import BulkClient
from launch.app import fhir_retry
from launch.db import Database
from launch.importer import ImportReport, import_path
from launch.settings import Settings
from smart_app.ehrs import normalise_iss
from smart_app.keys import AppKeys
from smart_app.oauth import ClientConfig, SmartClient


@dataclass
class BulkReport:
    files: int
    lines: int
    megabytes: float
    imported: ImportReport


async def bulk_sync(
    database: Database,
    settings: Settings,
    iss: str,
    *,
    scope: str = "system/*.read",
    say: Callable[[str], None] | None = None,
) -> BulkReport:
    iss = normalise_iss(iss)
    keys = None
    secret = None
    if settings.bulk_auth_method == "private_key_jwt":
        keys = AppKeys.load_or_create(settings.app_keys_path)
    else:
        secret = settings.resolved_bulk_secret()
        if secret is None:
            raise ValueError("CHARTCITE_BULK_CLIENT_SECRET is required for a bulk sync")
    client = ClientConfig(
        settings.bulk_client_id, "", scope, secret, auth_method=settings.bulk_auth_method
    )
    async with httpx2.AsyncClient(timeout=settings.http_timeout_seconds) as http:
        smart = SmartClient(http, keys=keys)
        conf = await smart.discover(iss, allow_without_pkce=True)
        token = await smart.backend_token(conf, client, scope)
    retry = fhir_retry(settings)

    def note(text: str) -> None:
        if say is not None:
            say(f"\r{text:<60}")

    with tempfile.TemporaryDirectory(prefix="cc-bulk-") as tmp:
        async with BulkClient(iss, token.access_token, retry=retry) as bulk:
            status_url = await bulk.kick_off()
            note("export accepted; waiting for the EHR")
            manifest = await bulk.wait(status_url, progress=note)
            files = await bulk.download(manifest, Path(tmp), progress=note)
        note(f"downloaded {len(files)} files, {sum(f.lines for f in files)} resources")
        if say is not None:
            say("\n")
        imported = await import_path(database, settings, Path(tmp), iss=iss, say=say)
    return BulkReport(
        files=len(files),
        lines=sum(f.lines for f in files),
        megabytes=sum(f.bytes for f in files) / 1e6,
        imported=imported,
    )
