"""``chartcite import``: files in, the same store a sync builds (validated, projected, indexed)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from launch.db import Database
from launch.importer import import_path
from launch.sandbox import generate_patients
from launch.settings import Settings
from smart_app.ehrs import source_key
from tests.conftest import ROOT, migrated_scratch_database
from tests.integration.test_sync_faults import query


def _count(db: Database, table: str, source: str, pid: str, extra: str = "") -> int:
    rows = query(
        db,
        f"SELECT count(*) FROM {table} WHERE source = :s AND patient_id = :p {extra}",
        s=source,
        p=pid,
    )
    return int(rows[0][0])


def test_import_of_ndjson_and_bundles_builds_the_synced_store(
    database: Database, tmp_path: Path
) -> None:
    resources = generate_patients(n_patients=2, seed=11)
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    bad = {"resourceType": "Observation", "id": "bad-1", "status": "final", "code": {"text": "x"},
           "subject": {"reference": f"Patient/{patients[0]['id']}"}, "valueQuantity": {"value": "NaN?"}}  # fmt: skip
    ndjson = [r for r in resources if r["resourceType"] != "Observation"]
    (tmp_path / "rest.ndjson").write_text("\n".join(json.dumps(r) for r in ndjson) + "\n")
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources if r["resourceType"] == "Observation"]
        + [{"resource": bad}],
    }
    (tmp_path / "obs.json").write_text(json.dumps(bundle))
    db = migrated_scratch_database(database, "import")
    iss = "https://ehr.example/fhir"
    report = asyncio.run(import_path(db, Settings(env="dev"), tmp_path, iss=iss))
    assert report.patients == 2 and report.quarantined == 1
    source = source_key(iss)
    assert report.source == source
    for p in patients:
        pid = p["id"]
        clinical = [
            r
            for r in resources
            if r["resourceType"]
            not in ("Patient", "Medication", "Binary", "Practitioner", "Organization")
            and (r.get("subject") or r.get("patient") or {}).get("reference") == f"Patient/{pid}"
        ]
        assert _count(db, "clinical_fact", source, pid) == len(clinical)
        assert _count(db, "clinical_fact", source, pid, "AND incomplete IS NOT NULL") == 0
        assert _count(db, "clinical_fact", source, pid, "AND indexed_hash = source_hash") == len(
            clinical
        )
        assert _count(db, "chunk", source, pid) > len(clinical)
    assert not query(db, "SELECT 1 FROM fhir_resource WHERE id = 'bad-1'")
    reasons = query(db, "SELECT resource_id, reason FROM quarantine WHERE source = :s", s=source)
    assert [r[0] for r in reasons] == ["bad-1"] and "valueQuantity" in reasons[0][1]
    runs = query(db, "SELECT status, mode FROM sync_run WHERE source = :s", s=source)
    assert sorted(runs) == sorted([("partial", "import"), ("done", "import")])

    again = asyncio.run(import_path(db, Settings(env="dev"), tmp_path, iss=iss))
    assert again.patients == 2
    projected = query(
        db,
        "SELECT counts->>'projected' FROM sync_run WHERE source = :s ORDER BY started_at DESC LIMIT 2",
        s=source,
    )
    assert all(int(r[0] or 0) == 0 for r in projected)  # nothing changed, nothing redone


def test_import_of_synthea_charts_is_complete(
    database: Database, tmp_path: Path, synthea_dir: Path
) -> None:
    shutil.copytree(synthea_dir / "_shared", tmp_path / "_shared")
    chosen = sorted(p for p in synthea_dir.glob("*.json"))[:2]
    for p in chosen:
        shutil.copy(p, tmp_path / p.name)
    db = migrated_scratch_database(database, "synthea")
    report = asyncio.run(import_path(db, Settings(env="dev"), tmp_path))
    assert report.patients == 2 and report.statuses == {"done": 2}, report
    rows = query(
        db,
        "SELECT count(*) FILTER (WHERE incomplete IS NULL AND indexed_hash = source_hash), count(*) "
        "FROM clinical_fact WHERE source = :s",
        s=report.source,
    )
    whole, total = rows[0]
    assert total > 100 and whole == total
    # Synthea vital-sign panels: systolic and diastolic by component code, never by position.
    bp = query(
        db,
        "SELECT detail FROM clinical_fact WHERE source = :s AND code = '85354-9' LIMIT 5",
        s=report.source,
    )
    assert bp, "Synthea charts have blood pressure panels"
    for (detail,) in bp:
        by_code = {c["code"]: c["value"] for c in detail["components"]}
        assert by_code["8480-6"] > by_code["8462-4"]  # systolic above diastolic, by code


def test_import_of_a_missing_path_fails_cleanly(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "launch.cli", "import", str(tmp_path / "nowhere"), "--dev",
         "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "does not exist" in out.stderr
