"""Question understanding (pure): kinds, named concepts, operators and time windows on a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rag.intents import parse_question, time_window
from tests.rag.lexicon_rows import small_lexicon

NOW = datetime(2026, 11, 21, tzinfo=UTC)
LEX = small_lexicon()


def parse(q: str):  # type: ignore[no-untyped-def]
    return parse_question(q, NOW, LEX)


def test_flagship_question() -> None:
    intent = parse(
        "What was this patient's HbA1c trend over the last 18 months, and which "
        "medications were previously prescribed?"
    )
    assert {"labs", "medications"} <= intent.kinds
    assert [m.entry.id for m in intent.mentions] == ["hba1c"]
    assert intent.since is not None and abs(
        (NOW - intent.since) - timedelta(days=18 * 30.44)
    ) < timedelta(days=1)
    assert intent.op is None and intent.status is None and intent.words == ()


@pytest.mark.parametrize(
    ("question", "since", "until"),
    [
        ("BP in the past year", NOW - timedelta(days=365.25), None),
        ("labs since 2024", datetime(2024, 1, 1, tzinfo=UTC), None),
        ("a1c since 2022-09-24", datetime(2022, 9, 24, tzinfo=UTC), None),
        ("a1c since Sept 2022", datetime(2022, 9, 1, tzinfo=UTC), None),
        ("ldl since march 3, 2023", datetime(2023, 3, 3, tzinfo=UTC), None),
        ("potassium since 9/24/2022", datetime(2022, 9, 24, tzinfo=UTC), None),
        (
            "visits in 2025",
            datetime(2025, 1, 1, tzinfo=UTC),
            datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "a1c in march 2024",
            datetime(2024, 3, 1, tzinfo=UTC),
            datetime(2024, 3, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "bp between 2020-01-15 and 2021-06-30",
            datetime(2020, 1, 15, tzinfo=UTC),
            datetime(2021, 6, 30, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "bp from jan 2020 to feb 2020",
            datetime(2020, 1, 1, tzinfo=UTC),
            datetime(2020, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        ("weight last 6 weeks", NOW - timedelta(days=42), None),
        ("a1c over the last two years", NOW - timedelta(days=2 * 365.25), None),
        ("procedures this year", datetime(2026, 1, 1, tzinfo=UTC), None),
        ("any allergies?", None, None),
    ],
)
def test_windows(question: str, since: datetime | None, until: datetime | None) -> None:
    assert time_window(question, NOW) == (since, until)


@pytest.mark.parametrize(
    ("question", "op"),
    [
        ("latest a1c", "latest"),
        ("most recent potassium?", "latest"),
        ("first bp recorded", "first"),
        ("earliest ldl", "first"),
        ("highest a1c ever", "highest"),
        ("lowest potassium", "lowest"),
        ("a1c over the last 2 years", None),  # "last" of a window is not "the latest"
        ("a1c trend", None),
    ],
)
def test_operators(question: str, op: str | None) -> None:
    assert parse(question).op == op


def test_most_specific_mention_wins_and_whole_words_only() -> None:
    assert [m.entry.id for m in parse("LDL cholesterol?").mentions] == ["ldl"]
    assert [m.entry.id for m in parse("cholesterol").mentions] == ["cholesterol"]
    assert [m.entry.id for m in parse("hemoglobin a1c").mentions] == ["hba1c"]
    assert [m.entry.id for m in parse("gingival disease").mentions] == ["gingivitis"]
    assert parse("bpm?").mentions == ()  # "bp" only as a whole word
    assert [m.entry.id for m in parse("whats her cholestrol").mentions] == ["cholesterol"]  # typo


def test_kinds_status_and_existence() -> None:
    assert parse("Any drug allergies?").kinds >= {"allergies"}
    assert "immunizations" in parse("flu shot this yr?").kinds
    assert "procedures" in parse("prior surgery?").kinds
    assert parse("how is the weather").kinds == frozenset()
    active = parse("what meds is she currently taking")
    assert active.status == "active" and "medications" in active.kinds
    assert parse("resolved problems").status == "resolved"
    assert parse("Has the patient ever been prescribed levothyroxine?").exists
    assert parse("how many visits in the last 2 years").count
    assert parse("what was the plan at the last visit").section == "plan"


def test_patient_fields_and_unknown_names() -> None:
    assert parse("DOB?").patient_fields == {"birth_date"} and "patient" in parse("DOB?").kinds
    assert parse("how old is she").patient_fields == {"age"}
    assert "patient" not in parse("name of her statin").kinds
    assert parse("Has she been prescribed zolpidem?").words == ("zolpidem",)
    assert parse("any history of sarcoidosis").words == ("sarcoidosis",)


def test_terse_lab_questions_ask_for_the_current_value() -> None:
    assert not parse("bp?").series and not parse("whats her a1c").series
    assert parse("bp trend").series and parse("how has her blood pressure been").series
    assert parse("a1c since 2024").series and parse("all ldl results").series


def test_shorthand_kinds_counts_and_sections() -> None:
    procs = parse("any procs last 1 yrs")
    assert "procedures" in procs.kinds and procs.words == () and procs.since is not None
    assert parse("# of visits since jun 2023").count
    assert parse("a/p from most recent visit").section == "plan"
    assert "encounters" not in parse("a/p from most recent visit").kinds
    assert parse("how many ER visits in the last 2 years").emergency
    assert not parse("number of encounters in 2024").emergency  # "er" inside a word is not ER
