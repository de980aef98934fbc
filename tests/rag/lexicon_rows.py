"""A small lexicon in the packaged file's format, so the resolver's rules are tested on their own."""

from __future__ import annotations

from rag.concepts import Lexicon

ROWS = [
    {
        "id": "hba1c",
        "kind": "lab",
        "label": "HbA1c (hemoglobin A1c)",
        "terms": ["a1c", "hba1c", "hemoglobin a1c", "hgba1c"],
        "codes": ["4548-4", "17856-6"],
        "words": ["hemoglobin a1c"],
    },
    {
        "id": "hemoglobin",
        "kind": "lab",
        "label": "hemoglobin",
        "terms": ["hemoglobin", "hgb"],
        "codes": ["718-7"],
        "words": ["hemoglobin"],
    },
    {
        "id": "cholesterol",
        "kind": "lab",
        "label": "total cholesterol",
        "terms": ["cholesterol", "total cholesterol"],
        "codes": ["2093-3"],
        "words": ["cholesterol"],
    },
    {
        "id": "ldl",
        "kind": "lab",
        "label": "LDL cholesterol",
        "terms": ["ldl", "ldl cholesterol", "ldl-c"],
        "codes": ["18262-6", "13457-7"],
        "words": ["ldl", "low density lipoprotein"],
    },
    {
        "id": "hdl",
        "kind": "lab",
        "label": "HDL cholesterol",
        "terms": ["hdl"],
        "codes": ["2085-9"],
        "words": ["hdl"],
    },
    {
        "id": "lipid_panel",
        "kind": "panel",
        "label": "lipid panel",
        "terms": ["lipid panel", "lipids"],
        "codes": ["57698-3"],
        "words": [],
        "members": ["cholesterol", "ldl", "hdl"],
    },
    {
        "id": "tsh",
        "kind": "lab",
        "label": "TSH (thyrotropin)",
        "terms": ["tsh", "thyrotropin"],
        "codes": ["3016-3"],
        "words": ["thyrotropin"],
    },
    {
        "id": "bp",
        "kind": "vital",
        "label": "blood pressure",
        "terms": ["blood pressure", "bp"],
        "codes": ["85354-9", "55284-4"],
        "words": ["blood pressure"],
    },
    {
        "id": "potassium",
        "kind": "lab",
        "label": "potassium",
        "terms": ["potassium", "k+"],
        "codes": ["2823-3", "6298-4"],
        "words": ["potassium"],
    },
    {
        "id": "atorvastatin",
        "kind": "medication",
        "label": "atorvastatin",
        "terms": ["atorvastatin", "lipitor"],
        "codes": ["83367"],
        "words": ["atorvastatin"],
    },
    {
        "id": "levothyroxine",
        "kind": "medication",
        "label": "levothyroxine",
        "terms": ["levothyroxine", "synthroid"],
        "codes": ["10582"],
        "words": ["levothyroxine"],
    },
    {
        "id": "influenza_vaccine",
        "kind": "immunization",
        "label": "influenza vaccine",
        "terms": ["flu shot", "flu vaccine", "influenza vaccine"],
        "codes": ["140", "141"],
        "words": ["influenza"],
    },
    {
        "id": "gingivitis",
        "kind": "condition",
        "label": "gingival disease",
        "terms": ["gingival disease", "gingivitis"],
        "codes": ["66383009"],
        "words": ["gingivitis", "gingival disease"],
    },
    {
        "id": "ckd",
        "kind": "condition",
        "label": "chronic kidney disease",
        "terms": ["ckd", "chronic kidney disease"],
        "codes": ["709044004"],
        "words": ["chronic kidney disease"],
    },
]


def small_lexicon() -> Lexicon:
    return Lexicon.from_rows(ROWS)
