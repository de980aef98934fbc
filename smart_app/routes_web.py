"""``GET /``: the clinician's page (patient banner, sync progress, ask box, cited answers)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from smart_app.pages import template

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(template("index.html"), headers={"Cache-Control": "no-store"})
