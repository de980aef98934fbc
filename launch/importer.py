"""``chartcite import PATH``: load FHIR Bundles and NDJSON files into the store, chart by chart.

Each patient in the files is stored under ``(source_key(iss), patient id)`` exactly as a sync would
store it: every resource validated (invalid ones quarantined with the reason), raw versions and
facts committed page by page, notes read (inline or from a ``Binary`` in the files), then indexed.
``--iss`` names the EHR the files came from, so its launches find the charts already there; the
default is a source of its own (``file://`` + the folder), which no launch reaches. Re-importing the
same files is a no-op; a changed file updates what changed. Nothing is fetched from anywhere.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_adapters import AccessFilter, create_sync_run, update_sync_run
from fhir_adapters import repository as store
from fhir_adapters.normalize import CLINICAL_TYPES, SUPPORT_TYPES
from fhir_adapters.notes import binary_ids
from fhir_adapters.sync import Puller
from fhir_adapters.validation import Validator
from launch.db import Database, create_engine
from launch.sandbox import SandboxStore, load_fhir_dir
from launch.settings import Settings
from rag import index_patient, load_embedder
from smart_app.ehrs import normalise_iss, source_key
from smart_app.jobs import chart_errors

PAGE = 500


@dataclass
class ImportReport:
    source: str
    patients: int = 0
    resources: int = 0
    quarantined: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _chart(files: SandboxStore, patient_id: str) -> list[dict[str, Any]]:
    """The patient's compartment, the Medications it references and the Binaries of its notes."""
    chart = files.everything(patient_id)
    for r in list(chart):
        if r["resourceType"] == "DocumentReference":
            chart += [b for bid in binary_ids(r) if (b := files.get("Binary", bid)) is not None]
    return chart


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


async def import_path(
    database: Database,
    settings: Settings,
    path: Path,
    *,
    iss: str | None = None,
    say: Callable[[str], None] | None = None,
) -> ImportReport:
    started = time.perf_counter()
    iss = normalise_iss(iss or f"file://{path.resolve()}")
    files = SandboxStore(load_fhir_dir(path))
    report = ImportReport(source=source_key(iss))
    patients = [str(p["id"]) for p in files.patients()]
    embedder = load_embedder(settings.resolved_model_dir, threads=settings.embed_threads)
    engine = create_engine(database, pool_size=4)
    validator = Validator(workers=settings.sync_validate_workers)
    try:
        await validator.start()
        for n, pid in enumerate(patients, 1):
            access = AccessFilter(report.source, pid, CLINICAL_TYPES | SUPPORT_TYPES)
            sync_id = uuid.uuid4()
            async with engine.begin() as conn:
                await create_sync_run(conn, access, session_id=None, sync_id=sync_id, mode="import")
            puller = Puller(engine, None, access, sync_id, validator=validator)
            chart = _chart(files, pid)
            for i in range(0, len(chart), PAGE):
                await puller.ingest(chart[i : i + PAGE])
            await puller.reconcile_all()
            await index_patient(engine, embedder, access)
            async with engine.connect() as conn:
                health = await store.chart_health(conn, access)
            errors = chart_errors(puller.result.errors, puller.result.quarantined, health)
            status = "partial" if errors else "done"
            async with engine.begin() as conn:
                await update_sync_run(
                    conn,
                    access,
                    sync_id,
                    status=status,
                    phase="finished",
                    counts=dict(puller.result.counts),
                    errors=errors,
                    quarantined=puller.result.quarantined,
                    error="; ".join(f"{k}: {v}" for k, v in errors.items()) or None,
                    answerable_at=datetime.now(UTC),
                    finished_at=datetime.now(UTC),
                )
            report.patients += 1
            report.resources += len(chart)
            report.quarantined += puller.result.quarantined
            report.statuses[status] = report.statuses.get(status, 0) + 1
            if say is not None:
                say(f"\r{_bar(n, len(patients))} {len(chart)} resources, {status}")
    finally:
        validator.close()
        await engine.dispose()
    if say is not None and patients:
        say("\n")
    report.seconds = time.perf_counter() - started
    return report


def print_progress(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
