"""PHI tokenization (``rag/phi.py``): known identifiers, Presidio, date shifting, restoring."""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from launch.sandbox import generate_patients
from rag.phi import PhiVault, PresidioDetector, known_identifiers, shift_dates, tokenize

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat-4711",
    "identifier": [{"system": "urn:mrn", "value": "MRN-0042917"}, {"value": "123-45-6789"}],
    "name": [{"given": ["Grace", "Ann"], "family": "Quintero"}],
    "telecom": [
        {"system": "phone", "value": "(617) 555-0143"},
        {"system": "email", "value": "grace.q@example.org"},
    ],
    "address": [
        {"line": ["12 Birch Lane"], "city": "Westborough", "state": "MA", "postalCode": "01581"}
    ],
    "birthDate": "1957-09-04",
    "contact": [{"name": {"given": ["Tomas"], "family": "Reyes"}}],
}
ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "participant": [
        {"individual": {"reference": "Practitioner/p1", "display": "Dr. Alan Whitfield"}}
    ],
}


def vault(**kw: Any) -> PhiVault:
    return PhiVault.for_request(PATIENT, [ENCOUNTER], rng=random.Random(5), **kw)


def test_known_identifiers_cover_patient_contacts_and_people_named() -> None:
    values = {v for _, v in known_identifiers(PATIENT, [ENCOUNTER])}
    for v in (
        "Grace",
        "Quintero",
        "MRN-0042917",
        "123-45-6789",
        "(617) 555-0143",
        "grace.q@example.org",
        "12 Birch Lane",
        "Westborough",
        "01581",
        "1957-09-04",
        "Tomas",
        "Reyes",
        "Dr. Alan Whitfield",
        "pat-4711",
    ):
        assert v in values, v
    assert "MA" not in values  # a two-letter state is not a Safe Harbor identifier


def test_known_identifiers_replaced_in_every_spelling_and_restored() -> None:
    v = vault(shift_dates=False)
    text = (
        "GRACE QUINTERO (MRN-0042917), DOB 9/4/1957, also September 4, 1957; phone 617.555.0143 "
        "or 6175550143; lives at 12 Birch Lane, Westborough; son Tomas Reyes; seen by "
        "Dr. Alan Whitfield. grace.q@example.org"
    )
    out = v.replace_known(text)
    for secret in ("Grace", "Quintero", "0042917", "1957", "555", "Birch", "Westborough", "Tomas"):
        assert secret.lower() not in out.lower(), (secret, out)
    assert out.count("[BIRTH_DATE]") == 2
    # the same value gets the same placeholder within a request
    assert v.replace_known("Quintero") == v.replace_known("quintero")
    restored = v.restore(out)
    assert restored is not None
    assert "QUINTERO" in restored and "Dr. Alan Whitfield" in restored  # as first written
    assert "1957-09-04" in restored  # a birth date comes back as the chart has it


def test_dates_shift_and_come_back_in_their_own_format() -> None:
    v = vault()
    assert -730 <= v.shift_days <= -30
    text = (
        "A1c 7.2 % on 2024-03-01T10:00:00Z, 3/5/2024 and March 9, 2024 (Observation/x-2024-01-01)"
    )
    shifted = v.shift(text)
    assert "2024-03-01" not in shifted and "3/5/2024" not in shifted and "March 9" not in shifted
    assert "Observation/x-2024-01-01" in shifted  # ids are not dates
    assert v.restore(shifted) == text.replace("March 9, 2024", "March 9, 2024")
    assert shift_dates("2024-02-30 stays", 10) == "2024-02-30 stays"
    kept = vault(shift_dates=False)
    assert kept.shift_days == 0 and kept.shift(text) == text


def test_unknown_or_mangled_placeholders_are_never_shown() -> None:
    v = vault()
    v.replace_known("Grace Quintero")
    assert v.restore("[PERSON_1] is well") is not None
    assert v.restore("[PERSON_9] is well") is None  # never issued
    assert v.restore("PERSON_1 is well") is None  # brackets lost
    assert v.restore("[PERSON 1] is well") is None
    assert v.restore("Seen in the ID clinic") is not None  # a word, not a placeholder


def test_the_mapping_never_reaches_a_repr() -> None:
    v = vault()
    v.replace_known("Grace Quintero, MRN-0042917")
    shown = repr(v) + str(v)
    assert "Grace" not in shown and "0042917" not in shown and "shift" not in shown


@pytest.fixture(scope="module")
def detector() -> PresidioDetector:
    return PresidioDetector()


def test_presidio_finds_what_the_chart_did_not_name(detector: PresidioDetector) -> None:
    v = PhiVault.for_request(None, [], rng=random.Random(1))
    text = (
        "Visited with her neighbour Maria Lopez; call John Carter at 555-201-7788. "
        "MRN: 88812345. Lives at 42 Oak Street. Email j.carter@example.com."
    )
    [out] = tokenize(v, [text], detector)
    for secret in ("Maria", "Lopez", "Carter", "201-7788", "88812345", "42 Oak", "example.com"):
        assert secret not in out, (secret, out)
    assert v.restore(out) == text


def test_presidio_leaves_clinical_words(detector: PresidioDetector) -> None:
    v = PhiVault.for_request(None, [], rng=random.Random(1))
    text = "Metformin 500 mg twice daily. HbA1c 7.2 %. CHF stable. HPI as above."
    [out] = tokenize(v, [text], detector)
    assert out == text


def _note_texts(resources: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], str]]:
    for r in resources:
        if r["resourceType"] != "DocumentReference":
            continue
        for c in r.get("content") or []:
            att = c.get("attachment") or {}
            ctype = att.get("contentType", "")
            if ctype.startswith("text/plain") and att.get("data"):
                charset = "latin-1" if "8859" in ctype else "utf-8"
                yield r, base64.b64decode(att["data"]).decode(charset)


def _name_recall(detector: PresidioDetector, notes: list[tuple[str, list[str]]]) -> float:
    """Of every occurrence of a named person in the notes, the share inside a PERSON span."""
    found = total = 0
    for text, names in notes:
        spans = [(s.start, s.end) for s in detector.find([text])[0] if s.kind == "PERSON"]
        for name in names:
            for m in re.finditer(re.escape(name), text):
                total += 1
                found += any(a <= m.start() and m.end() <= b for a, b in spans)
    assert total > 0
    return found / total


def test_presidio_recall_on_other_person_names_in_generated_notes(
    detector: PresidioDetector,
) -> None:
    """Clinicians named in the generated notes, found by Presidio alone (no known identifiers)."""
    resources = generate_patients(n_patients=8, seed=7, today=date(2026, 1, 15))
    notes = []
    for doc, text in _note_texts(resources):
        names = []
        for author in doc.get("author") or []:
            display = str(author.get("display", ""))
            names.append(display.removeprefix("Dr. ").split(",")[0])
        notes.append((text, [n for n in names if n]))
    recall = _name_recall(detector, notes)
    print(f"Presidio recall on clinician names in {len(notes)} generated notes: {recall:.3f}")
    assert recall >= 0.9


def test_synthea_notes_tokenized_leave_no_known_identifier(
    synthea_dir: Path, detector: PresidioDetector
) -> None:
    """Realism: Synthea's own notes, tokenized as the LLM path does, name nobody known."""
    checked = 0
    for bundle in sorted(synthea_dir.glob("*.json"))[:6]:
        entries = json.loads(bundle.read_text(encoding="utf-8")).get("entry") or []
        resources = [e.get("resource") or {} for e in entries]
        patient = next((r for r in resources if r.get("resourceType") == "Patient"), None)
        if patient is None:
            continue
        texts = [t for _, t in _note_texts(resources)][:10]
        v = PhiVault.for_request(patient, [], rng=random.Random(3))
        out = tokenize(v, texts, detector)
        secrets = {
            val for kind, val in known_identifiers(patient) if kind != "ID" and len(val) >= 3
        }
        for text in out:
            for s in secrets:
                assert not re.search(r"(?<!\w)" + re.escape(s) + r"(?!\w)", text, re.IGNORECASE), s
        checked += len(out)
    print(f"Synthea notes tokenized: {checked}")
    assert checked > 0
