"""In-memory state of the sandbox authorization server (RFC 6749 §4.1.2, §6, §10.5; RFC 7009).

- Authorization codes live 60 seconds and are single use: the first redemption attempt consumes
  the code; a second one is refused and revokes every token issued from it (RFC 6749 §4.1.2).
- A *grant* is what one code exchange (or client-credentials request) started: its access
  tokens (by ``jti``) and refresh tokens, including those later refreshes issue. Revocation
  works on grants: revoking any of its tokens (RFC 7009 §2.1), a reused code, or every grant of
  a patient (``POST /_control/revoke``) revokes all of the grant's tokens.
- Refresh tokens rotate: using one revokes it and issues a new one; with a lifetime they expire.
- Access tokens are self-contained JWTs; only their ``jti`` is remembered, to revoke them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from launch.sandbox.oauth_models import AuthorizationCode, RefreshToken

CODE_TTL_SECONDS = 60


@dataclass(slots=True)
class Grant:
    """The tokens issued under one authorization, and whose patient they are for."""

    grant_id: str
    client_id: str
    patient: str | None
    jtis: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set, repr=False)
    revoked: bool = False


class GrantStore:
    """Codes, grants, refresh tokens and revocations of one sandbox instance."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._codes: dict[str, AuthorizationCode] = {}
        self._consumed: dict[str, str | None] = {}  # code -> the grant issued from it
        self._grants: dict[str, Grant] = {}
        self._grant_of_jti: dict[str, str] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._revoked_jtis: set[str] = set()

    # -- authorization codes -----------------------------------------------------------------

    def save_code(self, record: AuthorizationCode) -> None:
        self._codes[record.code] = record

    def consume_code(self, code: str, client_id: str) -> AuthorizationCode | None:
        """Take the code out of the store; ``None`` if unknown, expired, reused or another client's.

        A reused code revokes what was issued from it.
        """
        if code in self._consumed:
            grant_id = self._consumed[code]
            if grant_id is not None:
                self.revoke_grant(grant_id)
            return None
        record = self._codes.pop(code, None)
        if record is None:
            return None
        self._consumed[code] = None
        if record.client_id != client_id or record.expires_at <= self._clock():
            return None
        return record

    def nonce_in_use(self, client_id: str, nonce: str) -> bool:
        """Whether a pending code of this client already carries this nonce (OIDC Core §15.5.2)."""
        now = self._clock()
        return any(
            c.client_id == client_id and c.nonce == nonce and c.expires_at > now
            for c in self._codes.values()
        )

    # -- grants ------------------------------------------------------------------------------

    def open_grant(self, client_id: str, patient: str | None, *, code: str | None = None) -> str:
        """Start a grant (for a redeemed ``code``, if any); return its id."""
        grant = Grant(secrets.token_urlsafe(12), client_id, patient)
        self._grants[grant.grant_id] = grant
        if code is not None:
            self._consumed[code] = grant.grant_id
        return grant.grant_id

    def note_access_token(self, grant_id: str, jti: str) -> None:
        self._grants[grant_id].jtis.add(jti)
        self._grant_of_jti[jti] = grant_id

    def save_refresh(self, record: RefreshToken) -> None:
        self._refresh[record.token] = record
        self._grants[record.grant_id].refresh_tokens.add(record.token)

    def grant_of(self, *, jti: str | None = None, refresh_token: str | None = None) -> str | None:
        """The id of the grant an access token (by ``jti``) or a refresh token belongs to."""
        if jti is not None:
            return self._grant_of_jti.get(jti)
        record = self._refresh.get(refresh_token or "")
        return record.grant_id if record is not None else None

    def revoke_grant(self, grant_id: str) -> None:
        """Revoke every access and refresh token of the grant."""
        grant = self._grants[grant_id]
        grant.revoked = True
        self._revoked_jtis |= grant.jtis
        for token in grant.refresh_tokens:
            self._refresh[token].revoked = True

    def revoke_patient(self, patient: str) -> int:
        """Revoke every live grant for ``patient``; return how many there were."""
        return self._revoke([g for g in self._grants.values() if g.patient == patient])

    def revoke_all(self) -> int:
        """Revoke every live grant; return how many there were."""
        return self._revoke(list(self._grants.values()))

    def _revoke(self, grants: list[Grant]) -> int:
        live = [grant for grant in grants if not grant.revoked]
        for grant in live:
            self.revoke_grant(grant.grant_id)
        return len(live)

    # -- refresh tokens and access tokens ----------------------------------------------------

    def refresh(self, token: str) -> RefreshToken | None:
        """The refresh token record if it exists, is not revoked and has not expired."""
        record = self._refresh.get(token)
        if record is None or record.revoked:
            return None
        if record.expires_at is not None and record.expires_at <= self._clock():
            return None
        return record

    def is_jti_revoked(self, jti: str) -> bool:
        return jti in self._revoked_jtis
