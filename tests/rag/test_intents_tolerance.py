"""Question understanding that survives how clinicians type: typos and odd plurals of type words,
dates that spell a concept ("oct"), a disease word followed by a vaccine word, windows that say
"past", shorthand counts, visit types, sections and demographics (pure, fixed clock)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rag.compose import kind_statements
from rag.concepts import lexicon
from rag.intents import correct_typos, parse_question
from tests.rag.lexicon_rows import small_lexicon

NOW = datetime(2026, 12, 1, tzinfo=UTC)
SMALL = small_lexicon()


def parse(q: str):  # type: ignore[no-untyped-def]
    return parse_question(q, NOW, SMALL)


def packaged(q: str):  # type: ignore[no-untyped-def]
    return parse_question(q, NOW)


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("procedrues since may 2026", "procedures"),
        ("any allergys?", "allergies"),
        ("surgerys in 2025", "procedures"),
        ("list medicaitons", "medications"),
        ("vacines given this year", "immunizations"),
        ("encouters in 2024", "encounters"),
    ],
)
def test_a_typo_of_a_type_word_still_names_the_type(question: str, kind: str) -> None:
    intent = parse(question)
    assert kind in intent.kinds
    assert "notes" not in intent.kinds and intent.words == (), "not a name to look up"


def test_typo_correction_leaves_names_alone() -> None:
    lex = lexicon()
    assert correct_typos("lastest a1c", lex) == "latest a1c"
    assert parse("lastest a1c").op == "latest"
    # Lexicon words and words that only look like a type word are not "corrected".
    for text in ("procalcitonin", "allergen panel", "latent tb", "mission", "operating room"):
        assert correct_typos(text, lex) == text


def test_a_month_in_a_date_is_not_a_concept() -> None:
    # "oct" is also retinal OCT in the lexicon; inside a date it is October.
    intent = packaged("procedures between aug 30 2025 and oct 3 2026")
    assert intent.mentions == () and intent.kinds == {"procedures"}
    assert intent.until is not None and intent.until.month == 10
    assert [m.entry.id for m in packaged("any oct scans?").mentions] == ["retinal_oct"]


@pytest.mark.parametrize(
    "question", ["covid vax given?", "has she had a covid vax", "covid shots?", "any covid jabs"]
)
def test_a_disease_word_before_a_vaccine_word_is_the_vaccine(question: str) -> None:
    intent = packaged(question)
    assert [m.entry.id for m in intent.mentions] == ["covid19_vaccine"]
    assert intent.kinds == {"immunizations"}


def test_a_disease_word_alone_stays_the_disease() -> None:
    assert [m.entry.id for m in packaged("hx of covid?").mentions] == ["covid19"]
    assert [m.entry.id for m in packaged("covid diagnosis date").mentions] == ["covid19"]


def test_in_the_past_is_ever_not_resolved() -> None:
    assert parse("any atorvastatin in the past").status is None
    assert parse("meds in the past year").status is None
    assert parse("problems over the previous 6 months").status is None
    assert parse("past meds").status == "resolved"
    assert parse("prior problems").status == "resolved"


def test_total_counts_visits_but_not_cholesterol() -> None:
    assert parse("total visits last 3 months").count
    assert parse("total number of ER visits").count
    assert parse("visits in total since 2024").count
    assert not parse("total cholesterol").count


def test_office_visits_are_ambulatory() -> None:
    intent = parse("how many office visits since May 2020")
    assert intent.ambulatory and intent.count and not intent.emergency and intent.words == ()
    assert not parse("how many visits since May 2020").ambulatory
    facts = [
        {"resource_type": "Encounter", "id": "amb", "category": "AMB", "date": NOW},
        {"resource_type": "Encounter", "id": "emer", "category": "EMER", "date": NOW},
        {"resource_type": "Encounter", "id": "imp", "category": "IMP", "date": NOW},
    ]
    chosen, stmts = kind_statements("encounters", facts, {}, intent, "")
    assert [f["id"] for f in chosen] == ["amb"]
    assert stmts[0].text.startswith("1 office (ambulatory) encounter,")


def test_a_and_p_is_the_plan() -> None:
    intent = parse("last a&p")
    assert intent.section == "plan" and "notes" in intent.kinds and intent.op == "latest"


@pytest.mark.parametrize(
    "question", ["is pt male or female", "is the patient female?", "male or female?"]
)
def test_male_or_female_asks_for_the_sex(question: str) -> None:
    intent = parse(question)
    assert intent.patient_fields == {"sex"} and "patient" in intent.kinds
    assert intent.words == ()
    assert "male" not in parse("male pattern hair loss?").patient_fields


@pytest.mark.parametrize("question", ["known cirrhosis?", "hx blood clot in leg?", "h/o dvt"])
def test_known_and_hx_ask_whether_it_is_there(question: str) -> None:
    intent = packaged(question)
    assert intent.exists and "conditions" in intent.kinds
    assert [m.entry.kind for m in intent.mentions] == ["condition"]


def test_right_now_is_a_time_not_a_body_side() -> None:
    intent = packaged("whats pt taking right now")
    assert intent.kinds == frozenset({"medications"}) and intent.status == "active"
    assert not intent.mentions and "right" not in intent.words


@pytest.mark.parametrize("question", ["ongoing medical issues", "current health issues"])
def test_medical_issues_are_the_problem_list(question: str) -> None:
    intent = packaged(question)
    assert intent.kinds == frozenset({"conditions"}) and intent.status == "active"
    assert not intent.words  # nothing left to look up: the active list, not "no ongoing …"


def test_nadir_is_the_lowest() -> None:
    intent = packaged("sodium nadir")
    assert intent.op == "lowest" and [m.entry.id for m in intent.mentions] == ["sodium"]


def test_count_inside_a_lab_name_is_not_a_count_question() -> None:
    assert packaged("lowest white count").count is False
    assert packaged("lowest white count").op == "lowest"
    assert packaged("how many visits this year").count is True
    assert packaged("count of er visits").count is True


@pytest.mark.parametrize(
    ("question", "entry"),
    [
        ("first trig on file", "triglycerides"),
        ("latest microalbumin/creatinine", "uacr"),
    ],
)
def test_lab_shorthand_names_one_lab(question: str, entry: str) -> None:
    assert [m.entry.id for m in packaged(question).mentions] == [entry]
