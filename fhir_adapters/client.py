"""FHIR REST client for one patient's compartment (the home of fhirpy).

FHIR R4 RESTful API: search paging with ``Bundle.link[next]`` (http.html#paging), the
``Patient/$everything`` operation (patient-operation-everything.html), ``Binary`` reads.
Results are plain dicts; fhirpy's typed mode is not used.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import (
    AuthorizationError,
    ForbiddenError,
    OperationOutcome,
    ResourceNotFound,
)
from fhirpy.base.utils import get_by_path, parse_pagination_url

from fhir_adapters.errors import FhirAuthError, FhirServerError


def _plain(value: Any) -> Any:
    """fhirpy returns AttrDicts; store plain JSON."""
    return json.loads(json.dumps(value))


class FhirClient:
    """A patient-context FHIR client authorised with the session's bearer token."""

    def __init__(self, base_url: str, access_token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = AsyncFHIRClient(
            self.base_url,
            authorization=f"Bearer {access_token}",
            aiohttp_config={"timeout": aiohttp.ClientTimeout(total=timeout)},
        )

    def __repr__(self) -> str:
        return f"FhirClient({self.base_url!r}, token=***)"

    async def _call(self, path: str, params: dict[str, Any] | None = None) -> Any:
        try:
            return await self._client.execute(path, method="get", params=params)
        except AuthorizationError:
            raise FhirAuthError(
                "the EHR rejected the session's token (401); launch again"
            ) from None
        except ForbiddenError:
            raise FhirAuthError("the EHR refused access (403)") from None
        except ResourceNotFound:
            raise
        except OperationOutcome:
            raise FhirServerError("the EHR returned an error (OperationOutcome)") from None
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise FhirServerError(
                f"the EHR is unreachable or answered badly ({type(exc).__name__})"
            ) from None

    async def capabilities(self) -> dict[str, Any]:
        return _plain(await self._call("metadata"))

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        try:
            return _plain(await self._call(f"{resource_type}/{resource_id}"))
        except ResourceNotFound:
            return None

    async def pages(self, path: str, params: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield each page's resources, following ``next`` links to the end."""
        bundle = await self._call(path, params)
        while True:
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise FhirServerError(
                    "the EHR answered a search with something other than a Bundle"
                )
            yield [_plain(e["resource"]) for e in bundle.get("entry") or [] if e.get("resource")]
            next_link = get_by_path(bundle, ["link", {"relation": "next"}, "url"])
            if not next_link:
                return
            try:
                next_path, next_params = parse_pagination_url(next_link)
            except ValueError:
                raise FhirServerError("the EHR's next link points at another server") from None
            bundle = await self._call(next_path, next_params)

    async def attachment_text(self, attachment: dict[str, Any]) -> str | None:
        """The text of an attachment: inline base64 ``data`` or a ``Binary`` it points at."""
        data = attachment.get("data")
        if data is None and isinstance(attachment.get("url"), str):
            url = attachment["url"]
            ref = url[len(self.base_url) + 1 :] if url.startswith(self.base_url) else url
            parts = ref.split("/")
            if len(parts) == 2 and parts[0] == "Binary":
                binary = await self.read("Binary", parts[1])
                data = binary.get("data") if binary else None
        if not isinstance(data, str):
            return None
        try:
            return base64.b64decode(data, validate=True).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            return None

    @staticmethod
    def supports_everything(capabilities: dict[str, Any]) -> bool:
        for rest in capabilities.get("rest") or []:
            for op in rest.get("operation") or []:
                if op.get("name") == "everything":
                    return True
            for res in rest.get("resource") or []:
                if res.get("type") == "Patient" and any(
                    op.get("name") == "everything" for op in res.get("operation") or []
                ):
                    return True
        return False
