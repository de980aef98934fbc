"""The curated clinical lexicon `rag/data/lexicon.jsonl`: shape, uniqueness, spot checks, Synthea coverage.

Each line maps clinician phrasings (`terms`) to chart codes (LOINC, SNOMED CT, RxNorm, CVX) and to
words that identify the concept inside a code display.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

LEXICON = Path(__file__).resolve().parents[2] / "rag" / "data" / "lexicon.jsonl"
SYNTHEA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthea"

KEYS = {"id", "kind", "label", "terms", "codes", "words", "members", "source"}
KINDS = {"lab", "vital", "panel", "condition", "medication", "immunization", "allergy", "procedure"}
# A term equal to one of these would capture questions that name no concept.
FORBIDDEN_TERMS = {
    "pressure",
    "disease",
    "blood",
    "test",
    "tests",
    "level",
    "levels",
    "count",
    "pain",
    "shot",
    "shots",
    "vaccine",
    "result",
    "results",
    "lab",
    "labs",
    "history",
    "exam",
    "screen",
    "panel",
    "medication",
    "medications",
    "drug",
    "allergy",
    "allergies",
    "condition",
    "chronic",
    "acute",
    "high",
    "low",
    "normal",
    "cancer",
    "infection",
    "injury",
    "surgery",
    "scan",
    "score",
    "rate",
    "urine",
    "serum",
    "total",
    "free",
    "the",
    "and",
    "of",
}
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def load() -> list[dict[str, Any]]:
    """Parse every line of the lexicon."""
    with LEXICON.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def entries() -> list[dict[str, Any]]:
    return load()


@pytest.fixture(scope="module")
def by_term(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {term: entry for entry in entries for term in entry["terms"]}


@pytest.fixture(scope="module")
def by_id(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["id"]: entry for entry in entries}


def test_every_line_is_one_json_object() -> None:
    lines = LEXICON.read_text(encoding="utf-8").splitlines()
    assert lines, "empty lexicon"
    for number, line in enumerate(lines, 1):
        assert line.strip() == line and line, f"line {number} is blank or padded"
        assert isinstance(json.loads(line), dict), f"line {number} is not an object"


def test_shape(entries: list[dict[str, Any]]) -> None:
    assert len(entries) >= 150
    for entry in entries:
        assert set(entry) == KEYS, entry.get("id")
        assert entry["kind"] in KINDS, entry["id"]
        assert SNAKE.match(entry["id"]), entry["id"]
        assert isinstance(entry["label"], str) and entry["label"].strip(), entry["id"]
        assert isinstance(entry["source"], str) and entry["source"].strip(), entry["id"]
        for key in ("terms", "codes", "words", "members"):
            assert isinstance(entry[key], list), (entry["id"], key)
            assert all(isinstance(v, str) and v for v in entry[key]), (entry["id"], key)
            assert len(set(entry[key])) == len(entry[key]), (entry["id"], key, "repeats")
        assert entry["terms"], entry["id"]
        assert entry["codes"] or entry["words"], f"{entry['id']} has neither codes nor words"


def test_sorted_by_kind_then_id(entries: list[dict[str, Any]]) -> None:
    keys = [(e["kind"], e["id"]) for e in entries]
    assert keys == sorted(keys)


def test_ids_unique(entries: list[dict[str, Any]]) -> None:
    counts = Counter(e["id"] for e in entries)
    assert not [i for i, n in counts.items() if n > 1]


def test_terms_and_words_lower_case_and_trimmed(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        for phrase in entry["terms"] + entry["words"]:
            assert phrase == phrase.lower().strip(), (entry["id"], phrase)
            assert "  " not in phrase, (entry["id"], phrase)


def test_terms_belong_to_one_entry(entries: list[dict[str, Any]]) -> None:
    owners: dict[str, list[str]] = {}
    for entry in entries:
        for term in entry["terms"]:
            owners.setdefault(term, []).append(entry["id"])
    shared = {t: ids for t, ids in owners.items() if len(ids) > 1}
    assert not shared


def test_no_generic_terms(entries: list[dict[str, Any]]) -> None:
    generic = [(e["id"], t) for e in entries for t in e["terms"] if t in FORBIDDEN_TERMS]
    assert not generic


def test_codes_are_bare(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        for code in entry["codes"]:
            assert re.fullmatch(r"[0-9]+(-[0-9])?", code), (entry["id"], code)


def test_members_exist_and_only_on_panels(
    entries: list[dict[str, Any]], by_id: dict[str, dict[str, Any]]
) -> None:
    for entry in entries:
        if entry["kind"] != "panel":
            assert entry["members"] == [], entry["id"]
            continue
        assert entry["members"], f"panel {entry['id']} has no members"
        for member in entry["members"]:
            assert member in by_id, (entry["id"], member)
            assert by_id[member]["kind"] != "panel", (entry["id"], member)


def test_spot_checks(by_term: dict[str, dict[str, Any]], by_id: dict[str, dict[str, Any]]) -> None:
    a1c = by_term["a1c"]
    assert a1c["kind"] == "lab" and "4548-4" in a1c["codes"]
    assert by_term["hba1c"] is a1c and by_term["glycated hemoglobin"] is a1c

    flu = by_term["flu shot"]
    assert flu["kind"] == "immunization" and "140" in flu["codes"]
    assert {"141", "150", "197", "88"} <= set(flu["codes"])

    lipitor = by_term["lipitor"]
    assert lipitor["kind"] == "medication" and "atorvastatin" in lipitor["words"]

    hemoglobin = by_term["hemoglobin"]
    assert "718-7" in hemoglobin["codes"] and "4548-4" not in hemoglobin["codes"]
    assert hemoglobin is not a1c

    bp = by_term["bp"]
    assert bp["kind"] == "vital" and {"8480-6", "8462-4", "85354-9"} <= set(bp["codes"])
    assert by_term["systolic"]["codes"] == ["8480-6"]
    assert by_term["diastolic"]["codes"] == ["8462-4"]

    assert by_term["ldl cholesterol"]["id"] == "ldl"
    assert "cholesterol" not in by_term["ldl"]["words"]
    assert by_term["cholesterol"]["words"] == ["cholesterol"]

    tetanus = by_term["tetanus"]
    assert tetanus["kind"] == "immunization" and {"113", "115", "09"} <= set(tetanus["codes"])
    assert by_term["tsh"]["codes"][0] == "3016-3"
    assert by_term["sugar"]["id"] == "glucose"
    assert by_term["kidney function"]["kind"] == "panel"
    assert {"egfr", "creatinine", "bun"} <= set(by_term["kidney function"]["members"])
    assert {"33914-3", "62238-1", "98979-8"} <= set(by_id["egfr"]["codes"])
    assert set(by_id["lipid_panel"]["members"]) >= {
        "total_cholesterol",
        "ldl",
        "hdl",
        "triglycerides",
    }
    assert by_term["bmp"]["kind"] == "panel" and "51990-0" in by_term["bmp"]["codes"]


def _component(display: str) -> str:
    """A LOINC display's component: the text before the first '['."""
    return display.split("[", 1)[0].lower()


def _claimed(code: str, display: str, entries: list[dict[str, Any]]) -> bool:
    if any(code in e["codes"] for e in entries):
        return True
    text = _component(display)
    return any(
        re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) for e in entries for word in e["words"]
    )


def _synthea_codes() -> tuple[dict[str, str], dict[str, str]]:
    """Distinct numeric Observation codes and Immunization CVX codes, with a display each."""
    observations: dict[str, str] = {}
    vaccines: dict[str, str] = {}
    for path in sorted(SYNTHEA.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        for item in bundle.get("entry", []):
            resource = item.get("resource", {})
            kind = resource.get("resourceType")
            if kind == "Observation" and "valueQuantity" in resource:
                for coding in resource.get("code", {}).get("coding", []):
                    if "loinc" in coding.get("system", ""):
                        observations[coding["code"]] = coding.get("display", "")
            elif kind == "Immunization":
                for coding in resource.get("vaccineCode", {}).get("coding", []):
                    vaccines[coding["code"]] = coding.get("display", "")
    return observations, vaccines


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason="Synthea sample bundles are not on this machine")
def test_covers_synthea_codes(entries: list[dict[str, Any]]) -> None:
    observations, vaccines = _synthea_codes()
    assert observations and vaccines
    for found, label in (
        (observations, "numeric Observation LOINC"),
        (vaccines, "Immunization CVX"),
    ):
        missing = sorted(c for c, d in found.items() if not _claimed(c, d, entries))
        share = 1 - len(missing) / len(found)
        assert share >= 0.9, f"{label}: {share:.0%} claimed; unclaimed {missing}"


def test_lay_and_shorthand_names_of_the_second_blind_set(
    by_term: dict[str, dict[str, Any]],
) -> None:
    # A named condition must resolve to its entry (and abstain when absent), never to note search.
    assert by_term["blood clot in leg"]["id"] == by_term["dvt"]["id"] == "deep_vein_thrombosis"
    assert "128053003" in by_term["dvt"]["codes"]
    assert (
        by_term["cirrhosis"]["kind"] == "condition" and "19943007" in by_term["cirrhosis"]["codes"]
    )
    assert by_term["pulmonary embolism"]["codes"] == ["59282003"]
    assert "pe" not in by_term, "bare 'pe' is the physical exam in notes"
    assert by_term["mag"]["id"] == "magnesium" and by_term["appy"]["id"] == "appendectomy"
