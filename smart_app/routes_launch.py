"""``GET /launch`` and ``GET /callback``: the SMART App Launch (EHR launch and standalone).

SMART App Launch 2.x §2.0.3-2.0.8: iss allow-list, discovery, authorize with PKCE S256 and
``aud``; callback with single-use ``state`` (stored hashed, short expiry), code exchange, id_token
verification, and the *granted* scopes as truth. Browser-facing: errors render as HTML.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from smart_app import repository as repo
from smart_app.api_models import Jwks, LogoutBody
from smart_app.audit import AuditRecord
from smart_app.crypto import random_token, sha256_hex
from smart_app.ehrs import normalise_iss
from smart_app.errors import (
    OAUTH_ERRORS,
    AppError,
    BadRequest,
    EhrRefused,
    Forbidden,
    NotAuthenticated,
)
from smart_app.oauth import ClientConfig
from smart_app.pages import callback_page, launch_page
from smart_app.scopes import GrantedScopes
from smart_app.session import SESSION_HEADER, app_state
from smart_app.state import AppState
from smart_app.tokens import end_session

log = logging.getLogger("chartcite.launch")
router = APIRouter()


BROWSER_COOKIE_TTL = 12 * 3600


def _scope_for(scope: str, standalone: bool) -> str:
    parts = scope.split()
    if standalone:
        parts = ["launch/patient" if p == "launch" else p for p in parts]
        if "launch/patient" not in parts:
            parts.append("launch/patient")
    return " ".join(dict.fromkeys(parts))


def from_browser(request: Request) -> bool:
    """A browser navigating (Fetch Metadata, or an Accept that asks for HTML first), as opposed
    to a script or an HTTP library, which gets plain redirects."""
    if request.headers.get("sec-fetch-mode") == "navigate":
        return True
    accept = request.headers.get("accept", "")
    return accept.startswith("text/html") or "application/xhtml+xml" in accept


def browser_cookie_name(secure: bool) -> str:
    """The pre-auth cookie that binds a launch's ``state`` to the browser that started it.
    ``__Host-`` (Secure, no Domain, Path=/) wherever the app is served over https."""
    return "__Host-chartcite-launch" if secure else "chartcite-launch"


async def _audit(state: AppState, record: AuditRecord) -> None:
    async with state.engine.begin() as conn:
        await repo.append_audit(conn, record)


@router.get("/launch", include_in_schema=True)
async def launch(request: Request, iss: str | None = None, launch: str | None = None) -> Response:
    """Start an EHR launch (``iss`` + ``launch``) or a standalone launch (``iss`` only).

    The launch's ``state`` is bound to the browser that started it (login CSRF) by a secret
    whose hash is stored with the state. It travels two ways: a pre-auth cookie (HttpOnly; on
    https ``__Host-``, Secure, SameSite=None, Partitioned), and — for a browser — the tab's
    ``sessionStorage``, written by a small page that then goes on to the EHR (inside an EHR
    iframe a browser may drop the cookie). A browser gets that page (200), other clients the
    redirect (302). Several launches in one browser share the cookie; each gets its own
    session."""
    state = app_state(request)
    if not iss:
        raise BadRequest(
            "the launch request has no iss (the EHR's FHIR base URL)", code="missing_iss"
        )
    iss = normalise_iss(iss)
    reg = state.config.ehrs.for_iss(iss)
    if reg is None:
        await _audit(state, AuditRecord("launch", "iss_not_allowed", detail={"iss": iss[:200]}))
        raise Forbidden("this EHR (iss) is not registered with chartcite", code="iss_not_allowed")
    iss = reg.iss  # an alias launches as the registered FHIR base
    conf = await state.smart.discover(iss, allow_without_pkce=reg.allow_without_pkce)
    scope = _scope_for(reg.scope, standalone=not launch)
    secure = state.config.secure_cookies
    cookie = browser_cookie_name(secure)
    browser = request.cookies.get(cookie) or random_token()
    oauth_state, verifier, nonce = random_token(), random_token(48), random_token(16)
    async with state.engine.begin() as conn:
        await repo.save_launch_state(
            conn,
            ttl_seconds=state.config.state_ttl_seconds,
            state_hash=sha256_hex(oauth_state),
            source=reg.source,
            iss=iss,
            launch=launch,
            code_verifier_enc=state.cipher.encrypt(verifier, context=b"pkce"),
            nonce=nonce,
            requested_scope=scope,
            browser_hash=sha256_hex(browser),
        )
    url = await state.smart.authorization_url(
        conf,
        ClientConfig.of(reg, state.config.redirect_uri, scope),
        state=oauth_state,
        code_verifier=verifier,
        nonce=nonce,
        launch=launch,
    )
    response: Response
    if from_browser(request):
        page = launch_page(authorize_url=url, state=oauth_state, binding=browser)
        response = HTMLResponse(page)
    else:
        response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        cookie,
        browser,
        max_age=BROWSER_COOKIE_TTL,
        path="/",
        httponly=True,
        secure=secure,
        samesite="none" if secure else "lax",
        partitioned=secure,
    )
    return response


@router.get("/callback")
async def callback(
    request: Request,
    state: str | None = None,
    code: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    """Finish the launch: check state (and its browser), exchange the code, verify the id_token,
    open a session of its own.

    A browser gets a page (200) that finishes through ``POST /callback`` with the launch secret
    its tab kept, and keeps the new session in that tab — so it works inside an EHR iframe where
    the pre-auth cookie was blocked, and the clinician's page never takes a session from a URL
    (a link with someone else's session in it does nothing). Other clients (scripts, HTTP
    libraries) prove the browser by the cookie and get a redirect to ``/#session=<id>``."""
    app = app_state(request)
    if not state:
        if error:  # an EHR error without our state: still the EHR's words, still audited
            await _audit(app, AuditRecord("launch", f"ehr_{_code(error)}", detail={"state": None}))
            raise EhrRefused("authorize", error, error_description)
        raise BadRequest("the callback has no state parameter", code="invalid_state")
    if from_browser(request):
        return HTMLResponse(callback_page())
    cookie = request.cookies.get(browser_cookie_name(app.config.secure_cookies))
    session_id = await _finish(app, state, code, error, error_description, proofs=(cookie,))
    return RedirectResponse(f"/#session={session_id}", status_code=302)


class CallbackCompletion(BaseModel):
    """What the callback page posts: the callback's parameters and its tab's launch secret."""

    model_config = ConfigDict(extra="forbid")

    state: str = Field(min_length=1, max_length=512)
    code: str | None = Field(default=None, max_length=4096)
    error: str | None = Field(default=None, max_length=200)
    error_description: str | None = Field(default=None, max_length=2000)
    binding: str | None = Field(default=None, max_length=512)


class CallbackSession(BaseModel):
    session: str
    """The new session, for the page to keep in its tab and send as ``X-Chartcite-Session``."""


@router.post("/callback", response_model=CallbackSession)
async def complete_callback(request: Request, body: CallbackCompletion) -> CallbackSession:
    """Finish a launch whose callback arrived without the pre-auth cookie: the ``binding`` (the
    secret the launching tab kept) must match the one stored with the ``state``. JSON only, so
    another site cannot post it without a CORS preflight; errors are JSON."""
    app = app_state(request)
    cookie = request.cookies.get(browser_cookie_name(app.config.secure_cookies))
    session_id = await _finish(
        app,
        body.state,
        body.code,
        body.error,
        body.error_description,
        proofs=(body.binding, cookie),
    )
    return CallbackSession(session=session_id)


async def _finish(
    app: AppState,
    state: str,
    code: str | None,
    error: str | None,
    error_description: str | None,
    *,
    proofs: tuple[str | None, ...],
) -> str:
    """Consume ``state`` (once), check that one of ``proofs`` is its browser's secret, take the
    EHR's answer, open the session; every refusal is audited. Returns the new session id."""
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
    if not any(p and secrets.compare_digest(sha256_hex(p), row.browser_hash) for p in proofs):
        await _audit(app, AuditRecord("launch", "state_not_this_browser", source=row.source))
        raise Forbidden(
            "this sign-in was started in another browser; launch chartcite again from your EHR",
            code="state_not_this_browser",
        )
    if error:
        refused = EhrRefused("authorize", error, error_description)
        await _audit(
            app,
            AuditRecord(
                "launch",
                refused.code,
                source=row.source,
                detail={"iss": row.iss, "description": refused.description},
            ),
        )
        raise refused
    if not code:
        raise BadRequest("the callback has no authorization code", code="invalid_request")
    reg = app.config.ehrs.for_iss(row.iss)
    if reg is None:
        raise Forbidden("this EHR is no longer registered with chartcite", code="iss_not_allowed")
    client = ClientConfig.of(reg, app.config.redirect_uri, row.requested_scope)
    verifier = app.cipher.decrypt(row.code_verifier_enc, context=b"pkce")
    try:
        conf = await app.smart.discover(row.iss, allow_without_pkce=reg.allow_without_pkce)
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
        detail: dict[str, object] = {"iss": row.iss}
        if isinstance(exc, EhrRefused):
            detail["description"] = exc.description
        await _audit(app, AuditRecord("launch", exc.code, source=row.source, detail=detail))
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
            client_id=reg.client_id,
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
            launch_context=token.launch_context,
            checked_at=datetime.now(UTC),
        )
        await repo.append_audit(
            conn,
            AuditRecord(
                "launch",
                "ok",
                actor=str(fhir_user) if fhir_user else None,
                client_id=reg.client_id,
                source=row.source,
                patient_id=token.patient,
                detail={
                    "iss": row.iss,
                    "scopes": str(granted),
                    "standalone": row.launch is None,
                    "client_type": reg.client_type,
                },
            ),
        )
    return session_id


@router.post("/logout", response_model=LogoutBody)
async def logout(request: Request) -> Response:
    """End the session named by ``X-Chartcite-Session``: its EHR tokens are revoked where the EHR
    offers RFC 7009 revocation, then deleted with the session. A custom header, not a cookie,
    carries the session, so another site cannot make the browser log out (or in)."""
    app = app_state(request)
    raw = request.headers.get(SESSION_HEADER)
    if not raw:
        raise NotAuthenticated("no session to end", code="no_session")
    async with app.engine.connect() as conn:
        row = await repo.get_session(conn, sha256_hex(raw))
    if row is None:
        return JSONResponse({"ended": False})
    reg = app.config.ehrs.for_iss(row.iss)
    revoked = False
    if reg is not None and row.kind == "launch":
        try:
            conf = await app.smart.discover(row.iss, allow_without_pkce=True)
            client = ClientConfig.of(reg, app.config.redirect_uri)
            for blob, ctx in (
                (row.refresh_token_enc, b"refresh"),
                (row.access_token_enc, b"access"),
            ):
                if blob is not None:
                    revoked = (
                        await app.smart.revoke(conf, client, app.cipher.decrypt(blob, context=ctx))
                        or revoked
                    )
        except AppError:
            revoked = False
    await end_session(app, row, "logout")
    return JSONResponse({"ended": True, "ehr_tokens_revoked": revoked})


@router.get("/.well-known/jwks.json", response_model=Jwks)
async def jwks(request: Request) -> JSONResponse:
    """chartcite's public signing keys (private_key_jwt), for EHRs to verify its assertions."""
    keys = app_state(request).smart.keys
    return JSONResponse(
        keys.jwks() if keys else {"keys": []}, headers={"Cache-Control": "max-age=300"}
    )


def _code(error: str) -> str:
    return error if error in OAUTH_ERRORS else "other"
