"""Question understanding (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rag.intents import match_displays, parse_question

NOW = datetime(2026, 11, 21, tzinfo=UTC)


def test_flagship_question() -> None:
    intent = parse_question(
        "What was this patient's HbA1c trend over the last 18 months, and which "
        "medications were previously prescribed?",
        NOW,
    )
    assert {"labs", "medications"} <= intent.kinds
    assert "4548-4" in intent.lab_codes
    assert intent.since is not None and abs(
        (NOW - intent.since) - timedelta(days=18 * 30.44)
    ) < timedelta(days=1)


def test_windows() -> None:
    assert parse_question("BP in the past year", NOW).since == NOW - timedelta(days=365.25)
    assert parse_question("labs since 2024", NOW).since == datetime(2024, 1, 1, tzinfo=UTC)
    intent = parse_question("visits in 2025", NOW)
    assert intent.since == datetime(2025, 1, 1, tzinfo=UTC) and intent.until is not None
    assert "encounters" in intent.kinds
    assert parse_question("any allergies?", NOW).since is None


def test_kinds() -> None:
    assert parse_question("Any drug allergies?", NOW).kinds >= {"allergies"}
    assert "immunizations" in parse_question("Is the flu vaccine up to date?", NOW).kinds
    assert "procedures" in parse_question("prior surgery?", NOW).kinds
    assert parse_question("how is the weather", NOW).kinds == frozenset()


def test_display_matching_uses_distinctive_words() -> None:
    codes = [
        {"code": "2823-3", "display": "Potassium [Moles/volume] in Serum or Plasma"},
        {"code": "4548-4", "display": "Hemoglobin A1c/Hemoglobin.total in Blood"},
    ]
    assert match_displays("What is the potassium?", codes) == {"2823-3"}
    assert match_displays("blood results in serum", codes) == set()
