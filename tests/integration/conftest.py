"""Signed-in, synced sessions shared by the integration tests (each sync costs seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from launch.demo_client import launch_patient, sync_patient
from tests.conftest import RunningDemo
from tests.integration.helpers import hba1c_patient


class Synced:
    def __init__(self, client: httpx2.Client, patient_id: str, status: dict[str, Any]) -> None:
        self.client = client
        self.patient_id = patient_id
        self.status = status


def _synced(demo: RunningDemo, patient_id: str, scope: str | None = None) -> Synced:
    client, resp = launch_patient(demo.base_url, patient_id, scope=scope)
    assert resp.status_code == 200, resp.text[:300]
    return Synced(client, patient_id, sync_patient(client, full=True))


@pytest.fixture(scope="session")
def patient_a(demo: RunningDemo) -> Iterator[Synced]:
    s = _synced(demo, hba1c_patient(demo.store))
    yield s
    s.client.close()


@pytest.fixture(scope="session")
def patient_b(demo: RunningDemo, patient_a: Synced) -> Iterator[Synced]:
    other = next(str(p["id"]) for p in demo.store.patients() if p["id"] != patient_a.patient_id)
    s = _synced(demo, other)
    yield s
    s.client.close()


@pytest.fixture(scope="session")
def observation_only(demo: RunningDemo, patient_a: Synced) -> Iterator[Synced]:
    s = _synced(demo, patient_a.patient_id, scope="launch openid fhirUser patient/Observation.rs")
    yield s
    s.client.close()
