"""The text of a clinical note (DocumentReference), from what the EHR stored. Pure, no I/O.

A DocumentReference's ``content`` repeats one document in several formats (FHIR R4
DocumentReference.content: "each with a different format"), inline (``attachment.data``) or by
``attachment.url`` (usually ``Binary/{id}``). The first readable rendition wins, in the order plain
text, Markdown, HTML, PDF. HTML is reduced to its text (scripts, styles and comments dropped); PDF text
comes from pypdf. The charset is the one the ``contentType`` declares, else UTF-8 (Windows-1252 when the
bytes are not UTF-8). Attachments over ``MAX_NOTE_BYTES`` are not read.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import io
import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from pypdf import PdfReader
from pypdf.errors import PyPdfError

MAX_NOTE_BYTES = 5_000_000
#: Readable formats, best first.
FORMATS = ("text/plain", "text/markdown", "text/html", "application/pdf")
_BLOCK_TAGS = frozenset(
    [
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "tr",
        "table",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "section",
        "article",
        "header",
        "footer",
        "pre",
        "hr",
    ]
)
_DROP_TAGS = frozenset({"script", "style", "head", "template", "noscript"})
logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings can quote document content


@dataclass(frozen=True)
class NoteText:
    """A note's text, or why there is none (a reason without document content)."""

    text: str | None
    problem: str | None = None


def media_type(content_type: str | None) -> tuple[str, str | None]:
    """``("text/plain", "iso-8859-1")`` from ``"text/plain; charset=ISO-8859-1"``."""
    if not content_type:
        return "", None
    kind, *params = [p.strip() for p in content_type.split(";")]
    charset = None
    for p in params:
        name, _, value = p.partition("=")
        if name.strip().lower() == "charset" and value:
            charset = value.strip().strip('"').lower()
    return kind.lower(), charset


def binary_id(attachment: dict[str, Any]) -> str | None:
    """The Binary id an attachment url names (``Binary/x``, or an absolute url ending so)."""
    url = attachment.get("url")
    if not isinstance(url, str):
        return None
    path = url.split("?", 1)[0].rstrip("/")
    parts = path.split("/")
    if len(parts) >= 2 and parts[-2] == "Binary" and parts[-1]:
        return parts[-1]
    return None


def attachments(resource: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for content in resource.get("content") or []:
        att = content.get("attachment") if isinstance(content, dict) else None
        if isinstance(att, dict):
            out.append(att)
    return out


def binary_ids(resource: dict[str, Any]) -> list[str]:
    """The Binary resources a note's attachments point at."""
    return [b for att in attachments(resource) if (b := binary_id(att))]


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in _DROP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_text(html: str) -> str:
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = [
        re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n")
    ]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()


def decode(data: bytes, charset: str | None) -> str:
    if charset:
        return data.decode(codecs.lookup(charset).name, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _rendition(
    attachment: dict[str, Any], binaries: dict[str, dict[str, Any]]
) -> tuple[str, str | None, str | None, str | None]:
    """(media type, charset, base64 data, problem) of one attachment."""
    bid = binary_id(attachment)
    binary = binaries.get(bid) if bid else None
    kind, charset = media_type(attachment.get("contentType") or (binary or {}).get("contentType"))
    data = attachment.get("data")
    if data is None and binary is not None:
        data = binary.get("data")
        if not kind:
            kind, charset = media_type(binary.get("contentType"))
    if data is None:
        if bid is None and attachment.get("url"):
            return kind, charset, None, "attachment url is not a Binary on the EHR"
        if bid is not None:
            return kind, charset, None, "attachment Binary could not be read"
        return kind, charset, None, "attachment has no data"
    return kind or "text/plain", charset, data, None


def note_text(resource: dict[str, Any], binaries: dict[str, dict[str, Any]]) -> NoteText:
    """The best readable rendition of a note, given the Binaries its attachments name."""
    found: list[tuple[int, str, str | None, str]] = []
    problems: list[str] = []
    for att in attachments(resource):
        kind, charset, data, problem = _rendition(att, binaries)
        if problem is not None:
            problems.append(problem)
            continue
        if kind not in FORMATS:
            problems.append(f"unsupported content type {kind[:40]}")
            continue
        assert data is not None
        found.append((FORMATS.index(kind), kind, charset, data))
    for _, kind, charset, data in sorted(found, key=lambda f: f[0]):
        if len(data) * 3 // 4 > MAX_NOTE_BYTES:
            problems.append(f"attachment larger than {MAX_NOTE_BYTES // 1_000_000} MB")
            continue
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            problems.append("attachment data is not valid base64")
            continue
        try:
            if kind == "application/pdf":
                text = pdf_text(raw)
            else:
                text = decode(raw, charset)
                if kind == "text/html":
                    text = html_text(text)
        except LookupError:
            problems.append("attachment declares an unknown charset")
            continue
        except (PyPdfError, ValueError, KeyError, TypeError):
            problems.append("PDF attachment could not be read")
            continue
        if text.strip():
            return NoteText(text.strip())
        problems.append("attachment has no text")
    if not problems:
        problems.append("note has no attachment")
    return NoteText(None, problems[0])
