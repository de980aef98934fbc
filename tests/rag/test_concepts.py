"""Concept claims: each chart code belongs to at most one lexicon entry, the most specific one."""

from __future__ import annotations

import pytest

from rag.concepts import Lexicon, display_component
from tests.rag.lexicon_rows import ROWS, small_lexicon

LEX = small_lexicon()


@pytest.mark.parametrize(
    ("code", "display", "entry"),
    [
        ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "hba1c"),
        ("99999-1", "Hemoglobin A1c [Mass fraction] in Blood by local method", "hba1c"),  # by words
        ("718-7", "Hemoglobin [Mass/volume] in Blood", "hemoglobin"),
        ("20454-5", "Hemoglobin [Presence] in Urine by Test strip", None),  # urine is not blood
        ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "cholesterol"),
        ("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay", "ldl"),
        ("X-LDL", "Low Density Lipoprotein Cholesterol", "ldl"),  # longest words win
        ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "hdl"),
        ("85354-9", "Blood pressure panel with all children optional", "bp"),
        ("56844-4", "Intraocular pressure of Eye", None),
        ("2019-8", "Carbon dioxide [Partial pressure] in Arterial blood", None),
        ("11557-6", "Carbon dioxide [Partial pressure] in Blood", None),
    ],
)
def test_observation_claims(code: str, display: str, entry: str | None) -> None:
    assert LEX.claim("Observation", "http://loinc.org", code, display) == entry


def test_claims_are_per_resource_type_and_by_ingredient() -> None:
    rx = "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert LEX.claim("MedicationRequest", rx, "617312", "atorvastatin 10 MG Oral Tablet") == (
        "atorvastatin"
    )
    assert LEX.claim("MedicationRequest", rx, "617314", "Lipitor 10 MG Oral Tablet") == (
        "atorvastatin"
    )
    assert LEX.claim("MedicationRequest", rx, "1", "simvastatin 20 MG Oral Tablet") is None
    assert LEX.claim("Condition", None, "1", "Gingivitis (disorder)") == "gingivitis"
    assert LEX.claim("Condition", None, "2", "Chronic kidney disease stage 2 (disorder)") == "ckd"
    assert LEX.claim("Condition", None, "3", "Chronic pain (finding)") is None
    assert LEX.claim("Observation", None, "3016-3", "anything") == "tsh"
    assert LEX.claim("Condition", None, "3016-3", "anything") is None


def test_panel_expands_to_members() -> None:
    assert LEX.expand(LEX.entries["lipid_panel"]) == {"lipid_panel", "cholesterol", "ldl", "hdl"}


def test_display_component() -> None:
    assert display_component("Cholesterol in LDL [Mass/volume] in Serum or Plasma") == (
        "cholesterol in ldl",
        "serum or plasma",
    )
    assert display_component("Body Weight") == ("body weight", "")


def test_a_combination_product_is_each_of_its_ingredients() -> None:
    rows = [
        *ROWS,
        {
            "id": "acetaminophen",
            "kind": "medication",
            "label": "acetaminophen",
            "terms": ["tylenol"],
            "codes": [],
            "words": ["acetaminophen"],
        },
        {
            "id": "oxycodone",
            "kind": "medication",
            "label": "oxycodone",
            "terms": ["oxycodone"],
            "codes": [],
            "words": ["oxycodone hydrochloride"],
        },
    ]
    lex = Lexicon.from_rows(rows)
    percocet = "Acetaminophen 325 MG / Oxycodone Hydrochloride 10 MG Oral Tablet [Percocet]"
    assert lex.claim("MedicationRequest", None, "1", percocet) == "oxycodone"
    assert lex.covers(lex.entries["acetaminophen"], "MedicationRequest", None, "1", percocet)
    # For results, a narrower claim is not taken by a broader entry's word.
    ldl = "Cholesterol in LDL [Mass/volume] in Serum or Plasma"
    assert not lex.covers(lex.entries["cholesterol"], "Observation", None, "18262-6", ldl)
