"""``GET /launch`` and ``GET /callback``: the SMART App Launch (EHR launch and standalone).

SMART App Launch 2.x §2.0.3-2.0.8: iss allow-list, discovery, authorize with PKCE S256 and
``aud``; callback with single-use ``state`` (stored hashed, short expiry), code exchange, id_token
verification, and the *granted* scopes as truth. Browser-facing: errors render as HTML.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from smart_app import repository as repo
from smart_app.audit import AuditRecord
from smart_app.crypto import random_token, sha256_hex
from smart_app.ehrs import normalise_iss, source_key
from smart_app.errors import AppError, BadRequest, Forbidden
from smart_app.oauth import ClientConfig
from smart_app.scopes import GrantedScopes
from smart_app.session import app_state
from smart_app.state import AppState

log = logging.getLogger("chartcite.launch")
router = APIRouter()


def _scope_for(client: ClientConfig, standalone: bool) -> str:
    parts = client.scope.split()
    if standalone:
        parts = ["launch/patient" if p == "launch" else p for p in parts]
        if "launch/patient" not in parts:
            parts.append("launch/patient")
    return " ".join(dict.fromkeys(parts))


async def _audit(state: AppState, record: AuditRecord) -> None:
    async with state.engine.begin() as conn:
        await repo.append_audit(conn, record)


@router.get("/launch", include_in_schema=True)
async def launch(request: Request, iss: str | None = None, launch: str | None = None) -> Response:
    """Start an EHR launch (``iss`` + ``launch``) or a standalone launch (``iss`` only)."""
    state = app_state(request)
    if not iss:
        raise BadRequest(
            "the launch request has no iss (the EHR's FHIR base URL)", code="missing_iss"
        )
    iss = normalise_iss(iss)
    if iss not in state.config.iss_allowlist:
        await _audit(state, AuditRecord("launch", "iss_not_allowed", detail={"iss": iss[:200]}))
        raise Forbidden("this EHR (iss) is not on chartcite's allow-list", code="iss_not_allowed")
    conf = await state.smart.discover(iss)
    client = state.config.client
    scope = _scope_for(client, standalone=not launch)
    oauth_state, verifier, nonce = random_token(), random_token(48), random_token(16)
    async with state.engine.begin() as conn:
        await repo.save_launch_state(
            conn,
            ttl_seconds=state.config.state_ttl_seconds,
            state_hash=sha256_hex(oauth_state),
            source=source_key(iss),
            iss=iss,
            launch=launch,
            code_verifier_enc=state.cipher.encrypt(verifier, context=b"pkce"),
            nonce=nonce,
            requested_scope=scope,
        )
    url = await state.smart.authorization_url(
        conf,
        ClientConfig(client.client_id, client.redirect_uri, scope, client.client_secret),
        state=oauth_state,
        code_verifier=verifier,
        nonce=nonce,
        launch=launch,
    )
    return RedirectResponse(url, status_code=302)


@router.get("/callback")
async def callback(
    request: Request,
    state: str | None = None,
    code: str | None = None,
    error: str | None = None,
) -> Response:
    """Finish the launch: check state, exchange the code, verify the id_token, open a session."""
    app = app_state(request)
    if not state:
        raise BadRequest("the callback has no state parameter", code="invalid_state")
    async with app.engine.begin() as conn:
        status, row = await repo.consume_launch_state(conn, sha256_hex(state))
    if status != "ok":
        await _audit(app, AuditRecord("launch", f"state_{status}"))
        message = {
            "unknown": "this sign-in link is not one chartcite issued",
            "used": "this sign-in link was already used; launch again",
            "expired": "this sign-in link expired; launch again",
        }[status]
        raise BadRequest(message, code="invalid_state")
    if error:
        await _audit(app, AuditRecord("launch", "denied", detail={"error": error[:64]}))
        raise Forbidden("the EHR did not authorize chartcite for this launch", code="launch_denied")
    if not code:
        raise BadRequest("the callback has no authorization code", code="invalid_request")
    cfg = app.config.client
    client = ClientConfig(cfg.client_id, cfg.redirect_uri, row.requested_scope, cfg.client_secret)
    conf = await app.smart.discover(row.iss)
    verifier = app.cipher.decrypt(row.code_verifier_enc, context=b"pkce")
    try:
        token = await app.smart.exchange_code(conf, client, code=code, code_verifier=verifier)
        granted = GrantedScopes.parse(token.scope)
        claims: dict[str, object] = {}
        if token.id_token:
            claims = await app.smart.verify_id_token(conf, client, token.id_token, nonce=row.nonce)
        elif "openid" in granted:
            raise BadRequest(
                "openid was granted but the EHR sent no id_token", code="id_token_missing"
            )
        if not token.patient:
            raise Forbidden(
                "the EHR gave no patient context for this launch", code="no_patient_context"
            )
    except AppError as exc:
        await _audit(app, AuditRecord("launch", exc.code, detail={"iss": row.iss}))
        raise
    fhir_user = claims.get("fhirUser") or claims.get("profile")
    session_id = random_token()
    async with app.engine.begin() as conn:
        await repo.create_session(
            conn,
            ttl_seconds=app.config.session_ttl_seconds,
            id_hash=sha256_hex(session_id),
            source=row.source,
            iss=row.iss,
            client_id=cfg.client_id,
            patient_id=token.patient,
            encounter_id=token.encounter,
            fhir_user=str(fhir_user) if fhir_user else None,
            granted_scope=str(granted),
            access_token_enc=app.cipher.encrypt(token.access_token, context=b"access"),
            refresh_token_enc=app.cipher.encrypt(token.refresh_token, context=b"refresh")
            if token.refresh_token
            else None,
            token_expires_at=datetime.fromtimestamp(token.expires_at, UTC)
            if token.expires_at
            else None,
            need_patient_banner=token.need_patient_banner,
            smart_style_url=token.smart_style_url,
        )
        await repo.append_audit(
            conn,
            AuditRecord(
                "launch",
                "ok",
                actor=str(fhir_user) if fhir_user else None,
                client_id=cfg.client_id,
                source=row.source,
                patient_id=token.patient,
                detail={"iss": row.iss, "scopes": str(granted), "standalone": row.launch is None},
            ),
        )
    response = RedirectResponse("/", status_code=302)
    response.set_cookie(
        app.config.cookie_name,
        session_id,
        max_age=app.config.session_ttl_seconds,
        httponly=True,
        secure=app.config.secure_cookies,
        samesite="lax",
        path="/",
    )
    return response
