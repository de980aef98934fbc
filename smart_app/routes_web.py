"""``GET /``: the clinician's page (patient banner, sync progress, ask box, cited answers), and
``GET /assets/{name}``: its script and style sheet, served from the package (no CDN: hospitals
run closed networks; the page's CSP admits scripts and styles from ``'self'`` only)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from smart_app.errors import NotFound
from smart_app.pages import ASSETS, asset, template

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(template("index.html"), headers={"Cache-Control": "no-store"})


@router.get("/assets/{name}", include_in_schema=False)
async def page_asset(name: str) -> Response:
    """One of the page's own files (a fixed list: nothing else under ``static/`` is served)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound("no such asset")
    return Response(
        asset(name),
        media_type=media_type,
        # Not PHI: the same bytes for everyone; revalidated so that an upgrade shows at once.
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
