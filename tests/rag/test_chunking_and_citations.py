"""Chunking, composition and citation validation (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from rag.answer import Statement
from rag.chunking import chunks_for_fact, fact_sentence, split_sections
from rag.citations import validate_statements
from rag.compose import lab_statements, trend_word

D = datetime(2025, 3, 1, tzinfo=UTC)


def _obs(i: str, value: float, day: int) -> dict:
    return {
        "resource_type": "Observation",
        "id": i,
        "display": "Hemoglobin A1c",
        "value_num": value,
        "unit": "%",
        "date": datetime(2025, 1, day, tzinfo=UTC),
        "detail": {},
        "code": "4548-4",
    }


def test_fact_sentence_and_shared_concept() -> None:
    a, b = chunks_for_fact(_obs("o1", 7.2, 1))[0], chunks_for_fact(_obs("o2", 8.1, 2))[0]
    assert a.text == "Hemoglobin A1c 7.2 % on 2025-01-01"
    assert a.concept_text == b.concept_text and a.id != b.id
    med = {
        "resource_type": "MedicationRequest",
        "id": "m",
        "display": "Metformin",
        "status": "active",
        "date": D,
        "detail": {"dosage": "500 mg BID"},
    }
    assert fact_sentence(med) == "Medication Metformin (active), prescribed 2025-03-01; 500 mg BID"


def test_notes_split_by_section_never_merge() -> None:
    note = "Chief complaint: fatigue.\nHistory of present illness: tired.\nmore text.\nPlan: repeat A1c in 3 months."
    sections = split_sections(note)
    assert sections == [
        "Chief complaint: fatigue.",
        "History of present illness: tired. more text.",
        "Plan: repeat A1c in 3 months.",
    ]
    long = "Assessment: " + "Word word word. " * 200
    assert all(len(s) <= 900 for s in split_sections(long))
    fact = {
        "resource_type": "DocumentReference",
        "id": "d",
        "display": "Progress note",
        "date": D,
        "encounter_id": "e",
        "value_text": note,
        "detail": {},
    }
    chunks = chunks_for_fact(fact)
    assert len(chunks) == 3 and all(c.kind == "note" and c.encounter_id == "e" for c in chunks)
    assert chunks[2].text.startswith("Progress note of 2025-03-01. Plan:")


def test_lab_statements_cite_each_value_and_trend() -> None:
    stmts = lab_statements([_obs("o2", 8.1, 2), _obs("o1", 9.0, 1), _obs("o3", 7.0, 3)], "")
    singles = [s for s in stmts if len(s.citations) == 1]
    assert [s.citations[0] for s in singles] == [
        "Observation/o1",
        "Observation/o2",
        "Observation/o3",
    ]
    assert "9.0 % on 2025-01-01" in singles[0].text
    trend = next(s for s in stmts if len(s.citations) == 3)
    assert "decreasing" in trend.text
    assert trend_word(7.0, 7.1) == "stable" and trend_word(7.0, 8.0) == "increasing"


def test_validation_removes_statements_with_any_bad_citation() -> None:
    stmts = [
        Statement(text="ok", citations=["Observation/a"]),
        Statement(text="not retrieved", citations=["Observation/z"]),
        Statement(text="other patient", citations=["Observation/b"]),
        Statement(text="type not allowed", citations=["MedicationRequest/m"]),
        Statement(text="half bad", citations=["Observation/a", "Observation/z"]),
        Statement(text="uncited fact", citations=[]),
        Statement(text="malformed", citations=["nonsense"]),
        Statement(text="a notice", kind="notice"),
    ]
    result = validate_statements(
        stmts,
        retrieved={"Observation/a", "Observation/b", "MedicationRequest/m"},
        stored={("Observation", "a"), ("MedicationRequest", "m")},
        allowed_types=frozenset({"Observation"}),
    )
    assert [s.text for s in result.kept] == ["ok", "a notice"]
    assert result.removed == 6


def _bp(i: str, day: int, systolic: float, diastolic: float, *, diastolic_first: bool) -> dict:
    comps = [
        {
            "code": "8480-6",
            "display": "Systolic blood pressure",
            "value": systolic,
            "unit": "mm[Hg]",
        },
        {
            "code": "8462-4",
            "display": "Diastolic blood pressure",
            "value": diastolic,
            "unit": "mm[Hg]",
        },
    ]
    if diastolic_first:
        comps.reverse()
    return {
        "resource_type": "Observation",
        "id": i,
        "display": "Blood pressure panel",
        "code": "85354-9",
        "value_num": None,
        "unit": None,
        "date": datetime(2025, 1, day, tzinfo=UTC),
        "detail": {"components": comps},
    }


def test_blood_pressure_reads_systolic_over_diastolic_by_code_not_position() -> None:
    panels = [
        _bp("bp1", 1, 150, 95, diastolic_first=True),
        _bp("bp2", 2, 128, 80, diastolic_first=False),
    ]
    assert fact_sentence(panels[0]) == "Blood pressure panel 150/95 mm[Hg] on 2025-01-01"
    texts = [s.text for s in lab_statements(panels, "")]
    assert "Blood pressure panel: 150/95 mm[Hg] on 2025-01-01." in texts
    assert "Blood pressure panel: 128/80 mm[Hg] on 2025-01-02." in texts
    trend = next(t for t in texts if "trend" in t)
    assert "decreasing (systolic)" in trend  # the systolic series, whatever order was listed
    assert "from 150/95 mm[Hg]" in trend and "to 128/80 mm[Hg]" in trend
