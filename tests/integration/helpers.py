"""Facts about the sandbox's data, read straight from the sandbox store (never hard-coded)."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from launch.sandbox import SandboxStore

HBA1C = "4548-4"


def patient_ref(resource: dict[str, Any]) -> str | None:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/"):
            return str(ref["reference"]).split("/", 1)[1]
    return None


def owned(store: SandboxStore, patient_id: str, resource_type: str) -> list[dict[str, Any]]:
    return [r for r in store.of_type(resource_type) if patient_ref(r) == patient_id]


def owner_of(store: SandboxStore, ref: str) -> str | None:
    rtype, rid = ref.split("/", 1)
    resource = store.get(rtype, rid)
    if resource is None:
        return None
    if rtype == "Patient":
        return str(resource["id"])
    return patient_ref(resource)


def codes(resource: dict[str, Any], key: str = "code") -> set[str]:
    concept = resource.get(key) or {}
    return {c.get("code") for c in concept.get("coding", []) if c.get("code")}


def display(resource: dict[str, Any], key: str = "code") -> str:
    concept = resource.get(key) or {}
    return str(concept.get("text") or (concept.get("coding") or [{}])[0].get("display") or "")


def hba1c_patient(store: SandboxStore) -> str:
    """The patient with the most HbA1c results."""
    counts: dict[str, int] = {}
    for obs in store.of_type("Observation"):
        if HBA1C in codes(obs) and (pid := patient_ref(obs)):
            counts[pid] = counts.get(pid, 0) + 1
    return max(sorted(counts), key=lambda p: counts[p])


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after 30 s."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def within_one_minute_window(seconds: float) -> None:
    """Wait, if needed, until ``seconds`` fit before the next whole minute: an exact count of a
    shared rate limit is only promised inside one window (``smart_app/rate_limit.py``)."""
    from smart_app.rate_limit import WINDOW, seconds_into_minute

    if (into := seconds_into_minute()) > WINDOW - seconds:
        time.sleep(WINDOW - into + 0.5)
