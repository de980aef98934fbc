"""The evaluation: phrasings file, ground truth on hand-built FHIR, the scorer, one end-to-end run."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from launch.eval import main, score_answer, value_in
from launch.eval_charts import Chart, ChartView, sandbox_charts
from launch.eval_questions import (
    KIND_NAMES,
    Maker,
    Phrasing,
    generate_questions,
    load_phrasings,
    load_slots,
)
from rag.answer import AnswerBody, CitationInfo, Statement

NOW = dt.datetime(2025, 6, 1, 12, tzinfo=dt.UTC)
PID = "p1"


def test_phrasings_cover_every_kind_in_both_splits() -> None:
    phrasings = load_phrasings()
    assert len(phrasings) >= 80
    assert len({p.id for p in phrasings}) == len(phrasings)
    splits: dict[str, set[str]] = defaultdict(set)
    for p in phrasings:
        splits[p.kind].add(p.split)
    assert set(splits) == set(KIND_NAMES)
    assert all(s == {"public", "heldout"} for s in splits.values())
    heldout = sum(p.split == "heldout" for p in phrasings)
    assert 0.4 < heldout / len(phrasings) < 0.6


def _obs(oid: str, loinc: str, when: str, value: float | None = None, **extra: object) -> dict:
    r: dict = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": f"Patient/{PID}"},
        "effectiveDateTime": when,
    }
    if value is not None:
        r["valueQuantity"] = {"value": value, "unit": "%"}
    r.update(extra)
    return r


def _component(code: str, value: int) -> dict:
    return {
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "valueQuantity": {"value": value, "unit": "mm[Hg]"},
    }


def _chart() -> Chart:
    resources = [
        {
            "resourceType": "Patient",
            "id": PID,
            "gender": "female",
            "birthDate": "1960-07-15",
            "name": [{"family": "Doe", "given": ["Jane"]}],
        },
        _obs("a1c-old", "4548-4", "2023-02-01", 8.1),
        _obs("a1c-mid", "17856-6", "2024-03-01T09:00:00-05:00", 7.5),
        _obs("a1c-sep", "4548-4", "2024-09-20", 7.9),
        _obs("a1c-new", "4548-4", "2025-01-10", 7.2),
        _obs("a1c-void", "4548-4", "2025-03-10", 5.0, status="entered-in-error"),
        _obs("a1c-future", "4548-4", "2025-09-10", 6.0),  # after the clock: not yet
        _obs("k-1", "2823-3", "2025-01-10", 4.4),
        _obs(
            "bp-1",
            "85354-9",
            "2024-10-01",
            component=[_component("8480-6", 150), _component("8462-4", 95)],
        ),
        _obs(  # diastolic listed first, as some EHRs do
            "bp-2",
            "85354-9",
            "2025-02-01",
            component=[_component("8462-4", 82), _component("8480-6", 124)],
        ),
        {
            "resourceType": "MedicationRequest",
            "id": "rx-1",
            "status": "stopped",
            "subject": {"reference": f"Patient/{PID}"},
            "authoredOn": "2023-01-01",
            "contained": [
                {
                    "resourceType": "Medication",
                    "id": "m1",
                    "code": {"text": "Lipitor 20 MG Oral Tablet"},
                }
            ],
            "medicationReference": {"reference": "#m1"},
        },
        {
            "resourceType": "MedicationRequest",
            "id": "rx-2",
            "status": "active",
            "subject": {"reference": f"Patient/{PID}"},
            "authoredOn": "2024-01-01",
            "medicationCodeableConcept": {"text": "atorvastatin 40 MG Oral Tablet"},
        },
        {
            "resourceType": "MedicationRequest",
            "id": "rx-3",
            "status": "active",
            "subject": {"reference": f"Patient/{PID}"},
            "authoredOn": "2024-01-01",
            "medicationCodeableConcept": {"text": "metformin 500 MG Oral Tablet"},
        },
    ]
    return Chart("ehr-test", "https://x.invalid/fhir", {"generator": "test"}, PID, resources, NOW)


def _make(kind: str, slots: tuple[str, ...] = ("lab",), **kw: object) -> tuple[dict, dict]:
    ph = Phrasing(id="t1", kind=kind, template="", slots=slots, split="public", **kw)  # type: ignore[arg-type]
    made = Maker(ChartView(_chart()), load_slots()).make(ph, random.Random(1))
    assert made is not None
    filled, truth = made
    return filled, truth.as_json()


def test_ground_truth_latest_first_extreme_lab() -> None:
    _, latest = _make("latest_lab")
    # a1c and potassium both qualify; the a1c answer is the newest valid, non-future result
    assert latest["required"] in (["Observation/a1c-new"], ["Observation/k-1"])
    a1c = ChartView(_chart()).lab_items({"4548-4", "17856-6"})
    assert [i.ref for i in a1c] == [
        "Observation/a1c-old",
        "Observation/a1c-mid",
        "Observation/a1c-sep",
        "Observation/a1c-new",
    ]
    _, high = _make("extreme_lab", pick="max")
    assert high == {
        "required": ["Observation/a1c-old"],
        "allowed": ["Observation/a1c-mid", "Observation/a1c-new", "Observation/a1c-sep"],
        "values": ["8.1"],
        "none": False,
    }
    _, low = _make("extreme_lab", pick="min")
    assert low["required"] == ["Observation/a1c-new"] and low["values"] == ["7.2"]


def test_ground_truth_bp_reads_components_by_code() -> None:
    _, bp = _make("latest_bp", ())
    assert bp["required"] == ["Observation/bp-2"]
    assert bp["values"] == ["124/82"]


def test_ground_truth_meds() -> None:
    view = ChartView(_chart())
    lipitor = [i.ref for i in view.med_requests(["atorvastatin", "lipitor"])]
    assert lipitor == ["MedicationRequest/rx-1", "MedicationRequest/rx-2"]
    _, active = _make("active_meds", ())
    assert active["required"] == ["MedicationRequest/rx-2", "MedicationRequest/rx-3"]
    _, dob = _make("demographics", (), asks="dob")
    assert dob == {
        "required": ["Patient/p1"],
        "allowed": [],
        "values": ["1960-07-15"],
        "none": False,
    }
    _, age = _make("demographics", (), asks="age")
    assert age["values"] == ["64"]


def test_ground_truth_series_window() -> None:
    filled, series = _make("lab_series", ("lab", "year"), window="in_year")
    assert filled["year"] == "2024"  # the only year with two results of one lab
    assert series["required"] == ["Observation/a1c-mid", "Observation/a1c-sep"]
    assert series["allowed"] == [] and not series["none"]
    filled, since = _make("lab_series", ("lab", "month", "year"), window="since_month")
    # March 2024 is too close to the 2024-03-01 result to be a fair edge; September 2024 is not
    assert (filled["year"], filled["month"].lower()[:3]) == ("2024", "sep")
    assert since["required"] == ["Observation/a1c-new", "Observation/a1c-sep"]


def _answer(statements: list[Statement], refs: list[str]) -> AnswerBody:
    return AnswerBody(
        answer_id="a",
        patient=PID,
        question="q",
        statements=statements,
        citations={
            r: CitationInfo(resource_type=r.split("/")[0], id=r.split("/")[1]) for r in refs
        },
        confidence=1.0,
        latency_ms=12.0,
    )


def _q(required: list[str], allowed: list[str], values: list[str], none: bool = False) -> dict:
    return {
        "qid": "q1",
        "kind": "latest_lab",
        "question": "last a1c?",
        "expected": {"required": required, "allowed": allowed, "values": values, "none": none},
    }


def test_scorer_precision_recall_correctness() -> None:
    q = _q(["Observation/a", "Observation/b"], ["Observation/c"], ["7.2"])
    body = _answer(
        [
            Statement(text="A1c 7.2 % on 2025-01-10.", citations=["Observation/a"]),
            Statement(text="Potassium 4.4.", citations=["Observation/x"]),
        ],
        ["Observation/a", "Observation/x"],
    )
    s = score_answer(q, body)
    assert s.precision == 0.5 and s.recall == 0.5 and not s.correct
    assert s.missing == ["Observation/b"] and s.extra == ["Observation/x"]

    good = _answer(
        [
            Statement(
                text="A1c 7.2 %", citations=["Observation/a", "Observation/b", "Observation/c"]
            )
        ],
        ["Observation/a", "Observation/b", "Observation/c"],
    )
    s = score_answer(q, good)
    assert s.precision == 1.0 and s.recall == 1.0 and s.correct

    wrong_value = _answer(
        [Statement(text="A1c 17.25 %", citations=["Observation/a", "Observation/b"])],
        ["Observation/a", "Observation/b"],
    )
    s = score_answer(q, wrong_value)
    assert s.values_missing == 1 and not s.correct


def test_scorer_none_and_uncited() -> None:
    q = _q([], [], [], none=True)
    notice = _answer([Statement(text="No PSA results found.", kind="notice")], [])
    s = score_answer(q, notice)
    assert s.correct and s.precision is None and s.recall is None
    fact = _answer([Statement(text="PSA 1.1", citations=["Observation/p"])], ["Observation/p"])
    assert not score_answer(q, fact).correct

    q2 = _q(["Observation/a"], [], [])
    uncited = _answer(
        [
            Statement(text="A1c 7.2", citations=["Observation/a"]),
            Statement(text="made up", citations=[]),
            Statement(text="dangling", citations=["Observation/zz"]),
        ],
        ["Observation/a"],
    )
    s = score_answer(q2, uncited)
    assert s.uncited == 2 and not s.correct
    assert not score_answer(
        q2,
        _answer([Statement(text="A1c", citations=["Observation/a"])], ["Observation/a"]),
        ["Observation/a"],
    ).correct  # foreign


def test_value_matching() -> None:
    assert value_in("7.2", "A1c 7.2 % on 2025")
    assert not value_in("7.2", "A1c 17.25 %")
    assert value_in("140", "LDL 140.0 mg/dL")
    assert value_in("124/82", "BP 124/82 mmHg")
    assert not value_in("male", "a female patient")


def test_generated_set_is_deterministic() -> None:
    charts = sandbox_charts(2)
    phrasings = load_phrasings()[:30]
    a = generate_questions(phrasings, charts, per_phrasing=1)
    b = generate_questions(phrasings, sandbox_charts(2), per_phrasing=1)
    assert a == b and len(a) >= 20


def test_committed_set_is_well_formed() -> None:
    path = Path(__file__).resolve().parents[2] / "launch" / "data" / "eval" / "questions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) >= 300
    assert {r["split"] for r in rows} == {"public", "heldout"}
    assert {r["kind"] for r in rows} == set(KIND_NAMES)


def test_end_to_end_small_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = tmp_path / "q.jsonl"
    assert (
        main(["--generate", str(gen), "--patients", "1", "--no-synthea", "--per-phrasing", "1"])
        == 0
    )
    rows = [json.loads(line) for line in gen.read_text().splitlines()]
    wanted = {"latest_lab", "latest_bp", "med_absent", "demographics", "active_meds"}
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in rows if r["kind"] in wanted))
    out = tmp_path / "scores.json"
    assert main(["--questions", str(small), "--split", "all", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "latest_bp" in printed
    scores = json.loads(out.read_text())
    assert scores["summary"]["n"] == len(scores["questions"]) >= 5


def test_malformed_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": "x"}\n')
    assert main(["--questions", str(bad)]) == 2
    bad.write_text("not json\n")
    assert main(["--questions", str(bad)]) == 2
