"""``chartcite sync --repair``: rebuild every patient's facts and chunks from the raw store, offline.

For each (EHR source, patient) with stored resources: re-project every raw clinical resource whose
fact is missing, from another version or incomplete (with the Medications and Binaries that are
stored; nothing is fetched), drop facts and chunks whose raw resource is gone, and index every fact
not indexed at its version. Safe to run at any time and as often as wanted: a whole store reports
zero work. Prints one line per patient that needed work (source key, counts; never a patient id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text

from fhir_adapters import AccessFilter
from fhir_adapters.normalize import CLINICAL_TYPES, SUPPORT_TYPES
from fhir_adapters.repository import chart_health
from fhir_adapters.sync import PullResult, reconcile
from launch.db import Database, create_engine
from launch.settings import Settings
from rag import index_patient, load_embedder


@dataclass
class RepairReport:
    patients: int = 0
    projected: int = 0
    removed_facts: int = 0
    removed_chunks: int = 0
    indexed: int = 0
    still_incomplete: int = 0


async def repair_all(
    database: Database, settings: Settings, *, say: Callable[[str], None] | None = None
) -> RepairReport:
    embedder = load_embedder(settings.resolved_model_dir, threads=settings.embed_threads)
    engine = create_engine(database, pool_size=2)
    report = RepairReport()
    try:
        async with engine.connect() as conn:
            patients = list(
                await conn.execute(
                    text("SELECT DISTINCT source, patient_id FROM fhir_resource ORDER BY 1, 2")
                )
            )
        for n, (source, patient_id) in enumerate(patients, 1):
            access = AccessFilter(source, patient_id, CLINICAL_TYPES | SUPPORT_TYPES)
            result = PullResult()
            await reconcile(engine, access, None, result)
            indexed = await index_patient(engine, embedder, access)
            async with engine.connect() as conn:
                health = await chart_health(conn, access)
            incomplete = sum(
                n for reasons in health["incomplete"].values() for n in reasons.values()
            )
            report.patients += 1
            report.projected += result.counts["projected"]
            report.removed_facts += result.counts["removed_facts"]
            report.removed_chunks += result.counts["removed_chunks"]
            report.indexed += indexed.facts
            report.still_incomplete += incomplete
            work = result.counts["projected"] + indexed.facts + result.counts["removed_facts"]
            if say is not None and work:
                say(
                    f"  [{n}/{len(patients)}] {source}: {result.counts['projected']} facts "
                    f"re-projected, {indexed.facts} re-indexed, "
                    f"{result.counts['removed_facts']} orphans removed"
                )
    finally:
        await engine.dispose()
    return report
