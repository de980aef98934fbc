"""In-memory state of the sandbox authorization server (RFC 6749 §4.1.2, §6, §10.5).

- Authorization codes live 60 seconds and are single use: the first redemption attempt consumes
  the code; a second one is refused and revokes every token issued from it (RFC 6749 §4.1.2).
- Refresh tokens rotate: using one revokes it and issues a new one.
- Access tokens are self-contained JWTs; only their ``jti`` is remembered, to revoke them.
"""

from __future__ import annotations

from collections.abc import Callable

from launch.sandbox.oauth_models import AuthorizationCode, RefreshToken

CODE_TTL_SECONDS = 60


class GrantStore:
    """Codes, refresh tokens and revocations of one sandbox instance."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._codes: dict[str, AuthorizationCode] = {}
        self._consumed: dict[str, list[str]] = {}  # code -> jtis and refresh tokens issued from it
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
            self._revoke_issued_from(code)
            return None
        record = self._codes.pop(code, None)
        if record is None:
            return None
        self._consumed[code] = []
        if record.client_id != client_id or record.expires_at <= self._clock():
            return None
        return record

    def note_issued(self, code: str, credential: str) -> None:
        """Remember a ``jti`` or refresh token issued from a code (for reuse revocation)."""
        self._consumed.setdefault(code, []).append(credential)

    def _revoke_issued_from(self, code: str) -> None:
        for credential in self._consumed.get(code, []):
            self._revoked_jtis.add(credential)
            refresh = self._refresh.get(credential)
            if refresh is not None:
                refresh.revoked = True

    def nonce_in_use(self, client_id: str, nonce: str) -> bool:
        """Whether a pending code of this client already carries this nonce (OIDC Core §15.5.2)."""
        now = self._clock()
        return any(
            c.client_id == client_id and c.nonce == nonce and c.expires_at > now
            for c in self._codes.values()
        )

    # -- refresh tokens and revocation -------------------------------------------------------

    def save_refresh(self, record: RefreshToken) -> None:
        self._refresh[record.token] = record

    def refresh(self, token: str) -> RefreshToken | None:
        """The refresh token record if it exists and is not revoked."""
        record = self._refresh.get(token)
        if record is None or record.revoked:
            return None
        return record

    def refresh_record(self, token: str) -> RefreshToken | None:
        """The refresh token record, revoked or not (introspection reports revoked as inactive)."""
        return self._refresh.get(token)

    def revoke_jti(self, jti: str) -> None:
        self._revoked_jtis.add(jti)

    def is_jti_revoked(self, jti: str) -> bool:
        return jti in self._revoked_jtis
