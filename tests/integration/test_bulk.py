"""Bulk Data: the sandbox's ``$export`` and ``chartcite sync --bulk``, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from fhir_adapters.bulk import BulkClient
from fhir_adapters.errors import FhirServerError
from launch.bulk_sync import bulk_sync
from launch.db import Database
from launch.sandbox import Fault, FaultPlan, SandboxStore
from launch.server import BackgroundServer, build_demo, free_port, sandbox_store
from launch.settings import Settings
from smart_app.ehrs import source_key
from tests.conftest import migrated_scratch_database
from tests.integration.test_sync_faults import query


class Ehr:
    def __init__(self, base: str, store: SandboxStore, faults: FaultPlan, db: Database, settings: Settings) -> None:  # fmt: skip
        self.base, self.store, self.faults, self.db, self.settings = (
            base,
            store,
            faults,
            db,
            settings,
        )
        self.iss = f"{base}/ehr/fhir"


@pytest.fixture(scope="module")
def ehr(data_dir: Path, database: Database) -> Iterator[Ehr]:
    db = migrated_scratch_database(database, "bulk")
    port = free_port()
    settings = Settings(env="dev", data_dir=data_dir, port=port, fhir_backoff_seconds=0.05)
    store = sandbox_store(patients=3)
    built = build_demo(settings, store, database=db)
    server = BackgroundServer(built.app, "127.0.0.1", port)
    server.start()
    yield Ehr(f"http://127.0.0.1:{port}", store, built.faults, db, built.settings)
    server.stop()


def _backend_token(ehr: Ehr, scope: str = "system/*.read") -> httpx2.Response:
    secret = ehr.settings.resolved_bulk_secret()
    assert secret
    return httpx2.post(
        f"{ehr.base}/ehr/auth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(ehr.settings.bulk_client_id, secret),
    )


def test_client_credentials_grant_system_scopes_only(ehr: Ehr) -> None:
    ok = _backend_token(ehr)
    assert ok.status_code == 200 and "patient" not in ok.json() and "refresh_token" not in ok.json()
    assert _backend_token(ehr, "patient/*.read").status_code == 400
    wrong = httpx2.post(
        f"{ehr.base}/ehr/auth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.read"},
        auth=(ehr.settings.bulk_client_id, "not-the-secret"),
    )
    assert wrong.status_code == 401


def test_export_requires_async_and_a_system_token(ehr: Ehr) -> None:
    token = _backend_token(ehr).json()["access_token"]
    url = f"{ehr.iss}/Patient/$export"
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx2.get(url, headers=headers).status_code == 400  # no Prefer: respond-async
    kicked = httpx2.get(url, headers={**headers, "Prefer": "respond-async"})
    assert kicked.status_code == 202 and "$export-status/" in kicked.headers["content-location"]
    assert httpx2.get(url, headers={"Prefer": "respond-async"}).status_code == 401


def test_bulk_sync_loads_every_chart_and_survives_throttling(ehr: Ehr) -> None:
    # The first status poll is throttled, the first file download is cut off: both retried.
    ehr.faults.set(
        Fault("status", path=r"\$export-status", status=429, retry_after="1", times=1),
        Fault("reset", path=r"\$export-file", times=1),
    )
    lines: list[str] = []
    report = asyncio.run(bulk_sync(ehr.db, ehr.settings, ehr.iss, say=lines.append))
    fired = {k for k, _ in ehr.faults.fired}
    ehr.faults.clear()
    assert fired == {"status", "reset"}
    assert report.imported.patients == len(ehr.store.patients())
    assert report.imported.statuses == {"done": len(ehr.store.patients())}
    source = source_key(ehr.iss)
    for p in ehr.store.patients():
        pid = str(p["id"])
        everything = {(r["resourceType"], r["id"]) for r in ehr.store.everything(pid)}
        stored = {
            tuple(r)
            for r in query(
                ehr.db,
                "SELECT resource_type, id FROM fhir_resource WHERE source = :s AND patient_id = :p "
                "AND resource_type <> 'Binary'",
                s=source,
                p=pid,
            )
        }
        assert stored == everything
        unindexed = query(
            ehr.db,
            "SELECT count(*) FROM clinical_fact WHERE source = :s AND patient_id = :p "
            "AND (incomplete IS NOT NULL OR indexed_hash IS DISTINCT FROM source_hash)",
            s=source,
            p=pid,
        )[0][0]
        assert unindexed == 0
    assert any("export" in line for line in lines)  # progress was shown


def test_bulk_urls_outside_the_fhir_base_are_refused(ehr: Ehr) -> None:
    async def probe() -> Any:
        async with BulkClient(ehr.iss, "token") as bulk:
            with pytest.raises(FhirServerError, match="outside its FHIR base"):
                await bulk.wait("https://elsewhere.example/$export-status/1")
            with pytest.raises(FhirServerError, match="outside its FHIR base"):
                await bulk.download(
                    {"output": [{"type": "Patient", "url": f"http://127.0.0.1:1/x?{ehr.iss}"}]},
                    Path("/tmp/never"),
                )

    asyncio.run(probe())
