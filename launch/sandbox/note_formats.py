"""Renditions of a synthetic note as real EHRs send them: plain text, Markdown, HTML, PDF, Latin-1.

``render(text, style)`` returns ``(contentType, bytes)``. The text is the generator's ``Label:``
sections; Markdown turns labels into ``##`` headings, HTML wraps sections in ``<h2>``/``<p>`` with a
``<script>`` and a ``<style>`` a reader must drop, PDF is a one-font text-only PDF 1.4 file.
"""

from __future__ import annotations

import html
import re

STYLES = ("plain", "markdown", "html", "latin1", "pdf")
_LABEL = re.compile(r"^([A-Z][A-Za-z /&()-]{2,60}):$")


def render(text: str, style: str) -> tuple[str, bytes]:
    if style == "markdown":
        return "text/markdown; charset=utf-8", _markdown(text).encode("utf-8")
    if style == "html":
        return "text/html; charset=utf-8", _html(text).encode("utf-8")
    if style == "latin1":
        return "text/plain; charset=ISO-8859-1", text.encode("latin-1", errors="replace")
    if style == "pdf":
        return "application/pdf", pdf(text)
    return "text/plain", text.encode("utf-8")


def _markdown(text: str) -> str:
    lines = text.splitlines()
    out = [f"# {lines[0].title()}"] if lines else []
    for line in lines[1:]:
        m = _LABEL.match(line.strip())
        out.append(f"## {m.group(1)}" if m else line)
    return "\n".join(out) + "\n"


def _html(text: str) -> str:
    lines = text.splitlines()
    parts = [
        "<!DOCTYPE html><html><head><title>Note</title>",
        "<style>body { font-family: sans-serif }</style></head><body>",
        "<script>window.tracking = 'never part of the note';</script>",
    ]
    if lines:
        parts.append(f"<h1>{html.escape(lines[0])}</h1>")
    for line in lines[1:]:
        if not line.strip():
            continue
        m = _LABEL.match(line.strip())
        parts.append(f"<h2>{html.escape(m.group(1))}:</h2>" if m else f"<p>{html.escape(line)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _pdf_string(line: str) -> str:
    safe = line.encode("latin-1", errors="replace").decode("latin-1")
    return "(" + safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def pdf(text: str) -> bytes:
    """A minimal PDF 1.4 with the text's lines on one page (Helvetica, 9 pt)."""
    lines = text.splitlines() or [""]
    ops = ["BT", "/F1 9 Tf", "11 TL", "36 806 Td"]
    for line in lines:
        ops.append(f"{_pdf_string(line)} Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    height = max(842, 40 + 11 * len(lines))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 {height}] "
            "/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>"
        ).encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)
