"""A session's EHR access token, kept alive, or the session ended when the EHR says it is over.

The app session must not outlive the EHR's grant (SMART App Launch 2.x; HIPAA: no PHI served
after the EHR revoked the app). So, for every request and every running sync:

- a token that expires within ``REFRESH_MARGIN`` (or that the FHIR server just answered 401 to)
  is refreshed with the refresh token — one refresh at a time per session, across processes (the
  session row is locked; refresh tokens rotate, so a second concurrent refresh would fail);
- every ``token_check_seconds`` the token is introspected (RFC 7662) where the EHR offers it;
  an inactive token is refreshed;
- a refresh that fails, a token that expired without a refresh token, or an inactive token that
  cannot be refreshed **ends the session**: its row (and the encrypted tokens) is deleted, the
  audit trail records why, and the caller gets 401 ``reauth_required``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from smart_app import repository as repo
from smart_app.audit import AuditRecord
from smart_app.errors import AppError, NotAuthenticated
from smart_app.oauth import ClientConfig
from smart_app.state import AppState

log = logging.getLogger("chartcite.tokens")
REFRESH_MARGIN = timedelta(seconds=30)


def reauth(message: str = "the EHR session ended: launch chartcite again from the EHR") -> Any:
    return NotAuthenticated(message, code="reauth_required")


def _expiring(row: Any, at: datetime) -> bool:
    return row.token_expires_at is not None and row.token_expires_at < at + REFRESH_MARGIN


async def end_session(state: AppState, row: Any, reason: str) -> None:
    """Delete the session and record why (no tokens, no PHI: the reason is a code)."""
    async with state.engine.begin() as conn:
        await repo.end_session(conn, row.id_hash)
        await repo.append_audit(
            conn,
            AuditRecord(
                "session_end",
                reason,
                actor=row.fhir_user,
                client_id=row.client_id,
                source=row.source,
                patient_id=row.patient_id,
                detail={"kind": row.kind},
            ),
        )


async def live_access_token(
    state: AppState, id_hash: str, *, force_refresh: bool = False, check: bool = False
) -> tuple[Any, str]:
    """The session row and a usable access token; ends the session (401) when there is none.

    ``check``: also introspect when the last check is older than ``token_check_seconds``.
    ``force_refresh``: the FHIR server refused the current token (401)."""
    async with state.engine.connect() as conn:
        row = await repo.get_session(conn, id_hash)
    if row is None:
        raise NotAuthenticated(
            "the session is unknown or expired: launch chartcite again", code="session_expired"
        )
    now = datetime.now(UTC)
    if row.kind == "bearer":  # an app's own token: no refresh here, it presents a new one
        expired = row.token_expires_at is not None and row.token_expires_at <= now
        if expired or force_refresh:
            raise NotAuthenticated(
                "the bearer token expired", code="invalid_token", headers=_bearer_invalid()
            )
        return row, state.cipher.decrypt(row.access_token_enc, context=b"access")
    if not force_refresh and not _expiring(row, now):
        stale = row.checked_at is None or row.checked_at < now - timedelta(
            seconds=state.config.token_check_seconds
        )
        if not (check and stale):
            return row, state.cipher.decrypt(row.access_token_enc, context=b"access")
        if await _still_active(state, row):
            async with state.engine.begin() as conn:
                await repo.update_session_tokens(conn, row.id_hash, checked_at=now)
            return row, state.cipher.decrypt(row.access_token_enc, context=b"access")
        force_refresh = True  # the EHR no longer accepts the token: try to refresh it
    return await _refresh(state, row, seen=row.access_token_enc)


async def _still_active(state: AppState, row: Any) -> bool:
    """Introspect the session's token where the EHR offers it (no endpoint: assume active)."""
    reg = state.config.ehrs.for_iss(row.iss)
    if reg is None:
        return False  # the EHR was unregistered: the session is over
    try:
        conf = await state.smart.discover(row.iss, allow_without_pkce=True)
        if not conf.introspection_endpoint:
            return True
        body = await state.smart.introspect(
            conf,
            ClientConfig.of(reg, state.config.redirect_uri),
            state.cipher.decrypt(row.access_token_enc, context=b"access"),
        )
    except AppError as exc:
        # The EHR could not be asked (down, odd answer): keep the session, check again later.
        log.warning("token introspection failed (%s)", exc.code)
        return True
    return body.get("active") is True


async def _refresh(state: AppState, row: Any, *, seen: bytes) -> tuple[Any, str]:
    reg = state.config.ehrs.for_iss(row.iss)
    async with state.engine.begin() as conn:
        locked = await repo.lock_session(conn, row.id_hash)
        if locked is None:
            raise reauth()
        now = datetime.now(UTC)
        if locked.access_token_enc != seen and not _expiring(locked, now):
            # Another request refreshed while this one waited for the lock.
            return locked, state.cipher.decrypt(locked.access_token_enc, context=b"access")
        if locked.refresh_token_enc is None or reg is None:
            failure = "token_expired" if reg is not None else "ehr_unregistered"
        else:
            failure = None
            try:
                conf = await state.smart.discover(row.iss, allow_without_pkce=True)
                token = await state.smart.refresh(
                    conf,
                    ClientConfig.of(reg, state.config.redirect_uri),
                    state.cipher.decrypt(locked.refresh_token_enc, context=b"refresh"),
                )
            except AppError as exc:
                failure = "refresh_failed"
                log.info("refresh refused (%s): ending the session", exc.code)
        if failure is None:
            values: dict[str, Any] = {
                "access_token_enc": state.cipher.encrypt(token.access_token, context=b"access"),
                "token_expires_at": datetime.fromtimestamp(token.expires_at, UTC)
                if token.expires_at
                else None,
                "checked_at": now,
            }
            if token.refresh_token:
                values["refresh_token_enc"] = state.cipher.encrypt(
                    token.refresh_token, context=b"refresh"
                )
            await repo.update_session_tokens(conn, row.id_hash, **values)
    if failure is not None:
        await end_session(state, row, failure)
        raise reauth()
    async with state.engine.connect() as conn:
        fresh = await repo.get_session(conn, row.id_hash)
    return fresh or row, token.access_token


def _bearer_invalid(description: str = "the access token is invalid or expired") -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer realm="chartcite", error="invalid_token", '
            f'error_description="{description}"'}  # fmt: skip
