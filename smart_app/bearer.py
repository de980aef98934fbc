"""``Authorization: Bearer``: FHIR-aware apps and agents call the API with their own SMART token.

RFC 6750 (bearer use, ``WWW-Authenticate`` errors), RFC 7662 and SMART App Launch 2.x
"Token Introspection" (``active``, ``scope``, ``patient``, ``fhirUser``, ``exp``, ``client_id``).

Which EHR issued the token: a JWT names it in ``iss`` (read unverified only to choose whom to ask;
the EHR's answer decides); an opaque token goes to the only registered EHR, or to the one named by
the ``X-Chartcite-Iss`` header. A token is checked by that EHR's introspection endpoint, or by its
JWKS when the registration says its access tokens are JWTs. Answers are cached briefly by the
token's SHA-256 — never past the token's ``exp``. The token's patient, scopes and user then apply
exactly as a launched session's do.
"""

from __future__ import annotations

import base64
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError

from smart_app.crypto import sha256_hex
from smart_app.ehrs import EhrRegistration
from smart_app.errors import AppError, Forbidden, NotAuthenticated
from smart_app.oauth import ClientConfig
from smart_app.state import AppState

ISS_HEADER = "x-chartcite-iss"
CACHE_SIZE = 10_000


def challenge(error: str | None = None, description: str | None = None) -> dict[str, str]:
    """A ``WWW-Authenticate`` header (RFC 6750 §3)."""
    parts = ['Bearer realm="chartcite"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    return {"WWW-Authenticate": ", ".join(parts)}


def invalid_token(description: str) -> NotAuthenticated:
    return NotAuthenticated(
        f"bearer token refused: {description}",
        code="invalid_token",
        headers=challenge("invalid_token", description),
    )


def insufficient_scope(description: str) -> Forbidden:
    return Forbidden(
        description, code="insufficient_scope", headers=challenge("insufficient_scope", description)
    )


@dataclass(frozen=True)
class BearerGrant:
    """What the EHR said about a token. No token here."""

    token_hash: str
    registration: EhrRegistration
    scope: str
    patient: str | None
    fhir_user: str | None
    client_id: str | None
    exp: float | None

    def __repr__(self) -> str:
        return f"BearerGrant(iss={self.registration.iss!r}, scope={self.scope!r})"


def _unverified_iss(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


class BearerVerifier:
    """Checks bearer tokens against their EHR, with a small bounded cache."""

    def __init__(self, state: AppState) -> None:
        self._state = state
        self._cache: OrderedDict[str, tuple[float, BearerGrant]] = OrderedDict()

    def _registration(self, token: str, iss_hint: str | None) -> EhrRegistration:
        ehrs = self._state.config.ehrs
        named = _unverified_iss(token) or iss_hint
        if named:
            reg = ehrs.for_iss(named)
            if reg is None:
                raise invalid_token("not issued by an EHR registered with chartcite")
            return reg
        regs = list(ehrs)
        if len(regs) == 1:
            return regs[0]
        raise invalid_token("name the issuing EHR in the X-Chartcite-Iss header")

    async def check(self, token: str, iss_hint: str | None = None) -> BearerGrant:
        key = sha256_hex(token)
        hit = self._cache.get(key)
        now = time.time()
        if hit and hit[0] > now:
            self._cache.move_to_end(key)
            return hit[1]
        self._cache.pop(key, None)
        reg = self._registration(token, iss_hint)
        smart = self._state.smart
        try:
            conf = await smart.discover(reg.iss, allow_without_pkce=True)
            if reg.token_format == "jwt":
                try:
                    claims = await smart.verify_access_jwt(conf, token)
                except (JoseError, ValueError):
                    raise invalid_token("the token's signature or claims do not verify") from None
                claims["active"] = True
            else:
                claims = await smart.introspect(
                    conf, ClientConfig.of(reg, self._state.config.redirect_uri), token
                )
        except AppError as exc:
            if exc.code == "invalid_token":
                raise
            raise invalid_token("the issuing EHR could not confirm it") from None
        if claims.get("active") is not True:
            raise invalid_token("the token is not active")
        exp = claims.get("exp")
        exp_f = float(exp) if isinstance(exp, int | float) else None
        if exp_f is not None and exp_f <= now:
            raise invalid_token("the token expired")
        issuer = claims.get("iss")
        if isinstance(issuer, str) and issuer.rstrip("/") not in (reg.iss, *reg.aliases):
            raise invalid_token("the token was issued for another FHIR server")
        grant = BearerGrant(
            token_hash=key,
            registration=reg,
            scope=str(claims.get("scope") or ""),
            patient=_str(claims.get("patient")),
            fhir_user=_str(claims.get("fhirUser")),
            client_id=_str(claims.get("client_id")),
            exp=exp_f,
        )
        until = now + self._state.config.bearer_cache_seconds
        self._cache[key] = (min(until, exp_f) if exp_f else until, grant)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return grant


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
