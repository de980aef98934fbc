"""The HTML chartcite serves: the clinician's page, the two launch bridge pages, the error page,
and the Content-Security-Policy that admits exactly their inline scripts and styles by hash.

The launch bridge pages carry the sign-in inside an EHR iframe where third-party cookies are
blocked: ``/launch`` keeps a per-launch secret in the tab's ``sessionStorage`` before it leaves
for the EHR's authorize endpoint, and ``/callback`` (when no pre-auth cookie came back) posts it
with the code, so the server can tell the tab that finishes a sign-in is the one that started it.
Values a page needs travel in a ``<script type="application/json">`` block, never in the script
itself, so that the script's hash — and the CSP — stay fixed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from functools import cache
from pathlib import Path

STATIC = Path(__file__).parent / "static"

#: The clinician page's own files, served at ``/assets/{name}`` (``script-src``/``style-src 'self'``).
ASSETS = {
    "page.css": "text/css; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "visuals.js": "text/javascript; charset=utf-8",
}

ERROR_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;color:#222}"
    "code{background:#f3f3f3;padding:.1rem .3rem}"
)


@cache
def template(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


@cache
def asset(name: str) -> bytes:
    """The bytes of one of :data:`ASSETS`."""
    if name not in ASSETS:
        raise KeyError(name)
    return (STATIC / name).read_bytes()


def _json_block(value: object) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>``, no ``<!--``)."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")


def launch_page(*, authorize_url: str, state: str, binding: str) -> str:
    """The page ``/launch`` answers a browser with: bind the launch to the tab, go to the EHR."""
    data = {"authorize": authorize_url, "state": state, "binding": binding}
    return (
        template("launch.html")
        .replace("{authorize_html}", html.escape(authorize_url, quote=True))
        .replace("{data_json}", _json_block(data))
    )


def callback_page() -> str:
    """The page ``/callback`` answers a browser whose pre-auth cookie did not come back."""
    return template("callback.html")


def error_page(status: int, code: str, message: str) -> str:
    """The browser-facing error page (``/launch``, ``/callback``): the message, escaped."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>chartcite: launch failed</title>"
        f"<style>{ERROR_STYLE}</style></head><body>"
        f"<h1>chartcite could not start</h1><p id='message'>{html.escape(message)}</p>"
        f"<p>Error code: <code id='code'>{html.escape(code)}</code> (HTTP {status})</p>"
        "<p>Close this window and launch chartcite again from your EHR.</p></body></html>"
    )


def _hashes(blocks: list[str]) -> str:
    return (
        " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
            for b in dict.fromkeys(blocks)
        )
        or "'none'"
    )


def page_csp() -> str:
    """The pages' Content-Security-Policy: their own script and style files (``'self'``, see
    :data:`ASSETS`) and inline scripts and styles by hash, API calls to itself only, nothing else
    (``frame-ancestors`` is added by the guard)."""
    pages = [template(n) for n in ("index.html", "launch.html", "callback.html")]
    scripts = [s for p in pages for s in re.findall(r"<script>(.*?)</script>", p, flags=re.DOTALL)]
    styles = [s for p in pages for s in re.findall(r"<style>(.*?)</style>", p, flags=re.DOTALL)]
    return (
        "default-src 'none'; connect-src 'self'; img-src 'self' data:; "
        f"script-src {_hashes(scripts)} 'self'; "
        f"style-src {_hashes([*styles, ERROR_STYLE])} 'self'; "
        "base-uri 'none'; form-action 'self'"
    )
