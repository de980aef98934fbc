"""``GET /``: the clinician's page (patient banner, sync progress, ask box, cited answers)."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@cache
def _page() -> str:
    return (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")


def page_csp() -> str:
    """The page's Content-Security-Policy: its one inline script and style by hash, API calls to
    itself only, nothing else (``frame-ancestors`` is added by the guard)."""
    page = _page()
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", page, flags=re.DOTALL)

    def hashes(blocks: list[str]) -> str:
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
            for b in blocks
        )

    return (
        "default-src 'none'; connect-src 'self'; img-src 'self' data:; "
        f"script-src {hashes(scripts) or chr(39) + 'none' + chr(39)}; "
        f"style-src {hashes(styles) or chr(39) + 'none' + chr(39)}; "
        "base-uri 'none'; form-action 'self'"
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(_page(), headers={"Cache-Control": "no-store"})
