"""Reading a note's text from what EHRs really send (pure: no server)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from fhir_adapters.client import retry_after_seconds, same_server
from fhir_adapters.notes import MAX_NOTE_BYTES, note_text
from launch.sandbox.note_formats import pdf, render

NOTE = (
    "PROGRESS NOTE\n\nAssessment:\n1. Type 2 diabetes, café au lait spots.\n\nPlan:\n- Metformin."
)


def doc(*attachments: dict[str, object]) -> dict[str, object]:
    return {
        "resourceType": "DocumentReference",
        "content": [{"attachment": a} for a in attachments],
    }


def inline(content_type: str, raw: bytes) -> dict[str, object]:
    return {"contentType": content_type, "data": base64.b64encode(raw).decode()}


@pytest.mark.parametrize("style", ["plain", "markdown", "html", "latin1", "pdf"])
def test_every_rendition_yields_the_clinical_text(style: str) -> None:
    content_type, raw = render(NOTE, style)
    got = note_text(doc(inline(content_type, raw)), {})
    assert got.problem is None and got.text is not None
    assert "Type 2 diabetes" in got.text and "Metformin" in got.text
    assert "café" in got.text  # charset (Latin-1) and WinAnsi (PDF) both carry it


def test_html_drops_scripts_styles_and_tags() -> None:
    raw = b"<html><head><style>p{}</style></head><body><script>alert('x')</script><p>BP 120/80</p></body></html>"
    got = note_text(doc(inline("text/html", raw)), {})
    assert got.text == "BP 120/80"


def test_declared_charset_is_used_and_undeclared_non_utf8_falls_back() -> None:
    latin = "Temp 38.5 °C".encode("latin-1")
    assert (
        note_text(doc(inline("text/plain; charset=ISO-8859-1", latin)), {}).text == "Temp 38.5 °C"
    )
    assert note_text(doc(inline("text/plain", latin)), {}).text == "Temp 38.5 °C"


def test_binary_attachment_is_read_from_the_stored_binary() -> None:
    binary = {"resourceType": "Binary", "id": "b1", "contentType": "application/pdf"}
    binary["data"] = base64.b64encode(pdf("Discharge summary\nStable.")).decode()
    got = note_text(doc({"url": "https://ehr.example/fhir/Binary/b1"}), {"b1": binary})
    assert got.text is not None and "Discharge summary" in got.text
    missing = note_text(doc({"contentType": "text/plain", "url": "Binary/b2"}), {})
    assert missing.text is None and missing.problem == "attachment Binary could not be read"


def test_best_rendition_wins_and_unreadable_ones_are_named() -> None:
    both = doc(inline("text/html", b"<p>from html</p>"), inline("text/plain", b"from plain"))
    assert note_text(both, {}).text == "from plain"
    image = note_text(doc(inline("image/png", b"\x89PNG")), {})
    assert image.text is None and image.problem == "unsupported content type image/png"
    assert note_text(doc(inline("text/plain; charset=no-such", b"x")), {}).problem == (
        "attachment declares an unknown charset"
    )
    bad = {"contentType": "text/plain", "data": "***not base64***"}
    assert note_text(doc(bad), {}).problem == "attachment data is not valid base64"
    broken_pdf = note_text(doc(inline("application/pdf", b"%PDF-1.4 garbage")), {})
    assert broken_pdf.text is None and broken_pdf.problem == "PDF attachment could not be read"
    assert note_text(doc(), {}).problem == "note has no attachment"


def test_attachments_over_the_size_cap_are_not_read() -> None:
    huge = {"contentType": "text/plain", "data": "QUFB" * (MAX_NOTE_BYTES // 3 + 10)}
    got = note_text(doc(huge), {})
    assert got.text is None and got.problem is not None and "larger than" in got.problem


def test_problem_reasons_never_quote_the_document() -> None:
    secret = "Patient Jane Roe has HIV"
    for att in (
        inline("text/plain; charset=" + secret, b"x"),
        inline("image/" + secret, b"x"),
    ):
        problem = note_text(doc(att), {}).problem or ""
        assert "Jane" not in problem and "HIV" not in problem


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Thu, 03 Dec 2026 12:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Thu, 03 Dec 2026 11:00:00 GMT", now=now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://ehr.example/fhir/Observation?_offset=50", True),
        ("https://ehr.example/fhir", True),
        ("https://EHR.example/fhir/Patient/1", True),
        ("https://evil.example/?https://ehr.example/fhir", False),
        ("https://ehr.example.evil.example/fhir/Observation", False),
        ("https://ehr.example:8443/fhir/Observation", False),
        ("http://ehr.example/fhir/Observation", False),
        ("https://ehr.example/fhir2/Observation", False),
        ("https://user:pw@ehr.example/fhir/Observation", False),
        ("https://ehr.example/other/fhir/Observation", False),
    ],
)
def test_same_server_is_exact_origin_and_path_prefix(url: str, ok: bool) -> None:
    assert same_server(url, "https://ehr.example/fhir/") is ok
