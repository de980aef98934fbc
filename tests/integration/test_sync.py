"""Sync through HTTP: fhirpy pulls the compartment from the sandbox with the session's token."""

from __future__ import annotations

import uuid
from contextlib import closing

from launch.demo_client import launch_patient, sync_patient
from tests.conftest import RunningDemo
from tests.integration.conftest import Synced
from tests.integration.helpers import owned


def test_sync_counts_match_the_ehr(demo: RunningDemo, patient_a: Synced) -> None:
    status = patient_a.status
    assert status["status"] == "done", status
    assert status["finished_at"] and status["started_at"] <= status["finished_at"]
    for rtype in (
        "Observation",
        "MedicationRequest",
        "Condition",
        "Encounter",
        "DocumentReference",
    ):
        expected = len(owned(demo.store, patient_a.patient_id, rtype))
        assert expected > 0
        assert status["counts"].get(rtype) == expected, rtype
    assert status["counts"]["Patient"] == 1
    assert status["counts"]["chunks_indexed"] > status["counts"]["Observation"]


def test_resync_is_idempotent(demo: RunningDemo, patient_a: Synced) -> None:
    again = sync_patient(patient_a.client, full=True)
    assert again["status"] == "done" and again["mode"] == "full"
    assert again["counts"]["Observation"] == patient_a.status["counts"]["Observation"]
    assert again["counts"].get("chunks_indexed", 0) == 0  # nothing changed, nothing re-indexed
    assert again["counts"].get("projected", 0) == 0


def test_resync_soon_after_is_incremental_and_picks_up_changes(demo: RunningDemo) -> None:
    pid = str(demo.store.patients()[-2]["id"])
    client, _ = launch_patient(demo.base_url, pid)
    with closing(client):
        first = sync_patient(client, full=True)
        assert first["status"] == "done"
        obs = owned(demo.store, pid, "Observation")[0]
        changed = {**obs, "meta": {**obs.get("meta", {}), "lastUpdated": "2999-01-01T00:00:00Z"}}
        changed["status"] = "amended"
        demo.store.add(changed)
        try:
            again = sync_patient(client)
            assert again["mode"] == "incremental" and again["status"] == "done", again
            fetched = sum(v for k, v in again["counts"].items() if k[:1].isupper())
            assert again["counts"]["Observation"] == 1 and fetched <= 3, again["counts"]
            assert again["counts"]["projected"] == 1
            stored = client.get(f"/api/resources/Observation/{obs['id']}").json()
            assert stored["status"] == "amended"
        finally:
            demo.store.add(obs)
        restored = sync_patient(client, full=True)
        assert restored["mode"] == "full" and restored["status"] == "done"


def test_invalid_resource_is_quarantined_and_sync_goes_on(demo: RunningDemo) -> None:
    pid = str(demo.store.patients()[-1]["id"])
    demo.store.add(
        {
            "resourceType": "Observation",
            "id": "broken-obs",
            "status": "final",
            "code": {"text": "Broken"},
            "subject": {"reference": f"Patient/{pid}"},
            "valueQuantity": {"value": "not-a-number"},
            "inventedElement": True,
        }
    )
    client, _resp = launch_patient(demo.base_url, pid)
    with closing(client):
        status = sync_patient(client)
        assert status["status"] == "partial", status["error"]
        assert status["quarantined"] == 1
        assert status["counts"]["Observation"] == len(owned(demo.store, pid, "Observation")) - 1
        assert client.get("/api/resources/Observation/broken-obs").status_code == 404


def test_unknown_sync_id_is_404(patient_a: Synced) -> None:
    for sid in (str(uuid.uuid4()), "not-a-uuid"):
        r = patient_a.client.get(f"/api/sync/{sid}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "sync_not_found"
