"""Granted scopes are the truth: an Observation-only launch sees no MedicationRequest anywhere."""

from __future__ import annotations

import json

from launch.demo_client import ask
from tests.conftest import RunningDemo
from tests.integration.conftest import Synced
from tests.integration.helpers import owned
from tests.integration.test_ask import QUESTION


def test_observation_only_launch(demo: RunningDemo, observation_only: Synced) -> None:
    ctx = observation_only.client.get("/api/context").json()
    assert "patient/Observation.rs" in ctx["scopes"]
    assert not any("MedicationRequest" in s or "*" in s for s in ctx["scopes"])
    assert ctx["readable_types"] == ["Observation"]
    assert observation_only.status["status"] == "done"
    assert {k for k in observation_only.status["counts"] if k[:1].isupper()} == {"Observation"}

    answer = ask(observation_only.client, QUESTION).json()
    body = json.dumps(answer)
    assert "MedicationRequest" not in body
    for med in owned(demo.store, observation_only.patient_id, "MedicationRequest"):
        assert med["id"] not in body
    notices = [s["text"] for s in answer["statements"] if s["kind"] == "notice"]
    assert any("medications" in n.lower() and "outside" in n.lower() for n in notices), notices
    assert any(c.startswith("Observation/") for s in answer["statements"] for c in s["citations"])


def test_observation_only_cannot_read_other_types(
    demo: RunningDemo, observation_only: Synced, patient_a: Synced
) -> None:
    med = owned(demo.store, observation_only.patient_id, "MedicationRequest")[0]
    # Stored by patient A's full-scope session, yet not readable with this session's scopes.
    r = observation_only.client.get(f"/api/resources/MedicationRequest/{med['id']}")
    assert r.status_code == 403 and r.json()["error"]["code"] == "scope_denied"
    assert patient_a.client.get(f"/api/resources/MedicationRequest/{med['id']}").status_code == 200
