"""Asking through HTTP: cited statements, validated against the sandbox's own data."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from launch.demo_client import ask
from tests.conftest import RunningDemo
from tests.integration.conftest import Synced
from tests.integration.helpers import HBA1C, codes, owned, owner_of

QUESTION = (
    "What was this patient's HbA1c trend over the last 18 months, and which medications "
    "were previously prescribed?"
)


def months_ago(now: datetime, months: int) -> datetime:
    year, month = divmod(now.year * 12 + now.month - 1 - months, 12)
    return now.replace(year=year, month=month + 1, day=min(now.day, 28))


def effective(obs: dict[str, Any]) -> datetime:
    raw = obs.get("effectiveDateTime") or obs["effectivePeriod"]["start"]
    dt = datetime.fromisoformat(raw)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def all_cited(answer: dict[str, Any]) -> set[str]:
    return {c for s in answer["statements"] for c in s["citations"]}


def test_hba1c_trend_and_medications_are_cited(demo: RunningDemo, patient_a: Synced) -> None:
    r = ask(patient_a.client, QUESTION)
    assert r.status_code == 200, r.text
    answer = r.json()
    pid = patient_a.patient_id
    assert answer["patient"] == f"Patient/{pid}" and answer["mode"] == "extractive"

    now = datetime.now(UTC)
    start = months_ago(now, 18)
    a1c = [o for o in owned(demo.store, pid, "Observation") if HBA1C in codes(o)]
    inside = [o for o in a1c if effective(o) >= start + timedelta(days=2)]
    outside = [o for o in a1c if effective(o) < start - timedelta(days=2)]
    assert len(inside) >= 3, "the generator should give this patient an HbA1c series"

    by_citation = {
        c: s for s in answer["statements"] for c in s["citations"] if len(s["citations"]) == 1
    }
    for obs in inside:
        ref = f"Observation/{obs['id']}"
        assert ref in by_citation, f"HbA1c {ref} of the window is not cited"
        text = by_citation[ref]["text"]
        value = obs["valueQuantity"]["value"]
        assert re.search(rf"\b{value:.1f}\b", text), text
        assert effective(obs).date().isoformat() in text
    cited = all_cited(answer)
    assert not {f"Observation/{o['id']}" for o in outside} & cited, (
        "values outside the window cited"
    )
    trend = [s for s in answer["statements"] if "trend" in s["text"].lower()]
    assert trend and any(w in trend[0]["text"] for w in ("increasing", "decreasing", "stable"))

    meds = owned(demo.store, pid, "MedicationRequest")
    assert meds
    # Orders are grouped by product: each order is cited by the statement of its product.
    by_any = {c: s for s in answer["statements"] for c in s["citations"]}
    for med in meds:
        ref = f"MedicationRequest/{med['id']}"
        assert ref in by_any, f"{ref} not cited"
        assert (
            by_any[ref]["text"].split(":")[0].split(" — ")[0] == answer["citations"][ref]["display"]
        ), "an order is cited by another product's statement"
    for ref in cited:
        assert owner_of(demo.store, ref) == pid, f"{ref} is not this patient's"
        assert ref in answer["citations"]
        info = answer["citations"][ref]
        assert f"{info['resource_type']}/{info['id']}" == ref
    assert answer["removed_statements"] == 0
    assert 0 < answer["confidence"] <= 1


def test_answer_is_returned_again_unchanged(patient_a: Synced) -> None:
    first = ask(patient_a.client, "Which allergies does the patient have?").json()
    again = patient_a.client.get(f"/api/answers/{first['answer_id']}")
    assert again.status_code == 200
    assert again.json() == first


def test_cited_resource_can_be_read(demo: RunningDemo, patient_a: Synced) -> None:
    answer = ask(patient_a.client, QUESTION).json()
    ref = min(all_cited(answer))
    r = patient_a.client.get(f"/api/resources/{ref}")
    assert r.status_code == 200
    rtype, rid = ref.split("/")
    assert r.json() == demo.store.get(rtype, rid)


def test_bad_questions_are_422_json(patient_a: Synced) -> None:
    for body in (
        {"question": ""},
        {"question": "   \n\t "},
        {"question": "x" * 2001},
        {},
        {"question": 5},
        {"question": "ok", "extra": 1},
    ):
        r = patient_a.client.post("/api/ask", json=body)
        assert r.status_code == 422, body
        err = r.json()["error"]
        assert err["code"] == "invalid_request" and err["message"]
        assert "x" * 50 not in err["message"]
    ok = ask(patient_a.client, "x" * 1990 + " a1c?")
    assert ok.status_code == 200


def test_unknown_answer_is_404(patient_a: Synced) -> None:
    for aid in ("00000000-0000-0000-0000-000000000000", "nope"):
        r = patient_a.client.get(f"/api/answers/{aid}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "answer_not_found"


def test_notes_question_quotes_the_patients_notes(demo: RunningDemo, patient_a: Synced) -> None:
    answer = ask(patient_a.client, "What follow-up plan did the notes document?").json()
    notes = [c for c in all_cited(answer) if c.startswith("DocumentReference/")]
    assert notes, json.dumps(answer)[:500]
    for ref in notes:
        assert owner_of(demo.store, ref) == patient_a.patient_id


def test_every_blood_pressure_reads_systolic_over_diastolic(
    demo: RunningDemo, patient_a: Synced
) -> None:
    """The sandbox lists diastolic first in every third panel; answers must not care."""
    panels = [
        o for o in owned(demo.store, patient_a.patient_id, "Observation") if "85354-9" in codes(o)
    ]
    reversed_panels = [o for o in panels if "8462-4" in codes(o["component"][0])]
    assert reversed_panels, "the generator varies component order"
    r = ask(patient_a.client, "Show all blood pressure readings")
    assert r.status_code == 200, r.text
    statements = r.json()["statements"]
    by_id = {
        s["citations"][0].split("/")[1]: s["text"] for s in statements if len(s["citations"]) == 1
    }
    checked = 0
    for o in panels:
        if o["id"] not in by_id:
            continue
        value = {next(iter(codes(c))): c["valueQuantity"]["value"] for c in o["component"]}
        assert f"{value['8480-6']:g}/{value['8462-4']:g} mm[Hg]" in by_id[o["id"]], by_id[o["id"]]
        checked += 1
    assert checked >= 2 and any(o["id"] in by_id for o in reversed_panels)
