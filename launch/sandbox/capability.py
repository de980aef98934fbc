"""Discovery documents of the sandbox EHR.

- ``smart_configuration``: SMART App Launch 2.x §"SMART on FHIR configuration"
  (``{fhir}/.well-known/smart-configuration``), metadata fields per RFC 8414: the endpoints
  (authorize, token, revocation, introspection, JWKS), the client authentication methods
  (``none``, client secrets, ``private_key_jwt`` with RS384/ES384) and SMART's capabilities.
- ``capability_statement``: FHIR R4 CapabilityStatement (``{fhir}/metadata``) with the SMART
  ``oauth-uris`` security extension, the served resource types, their search parameters and
  the ``Patient/$everything`` operation.
"""

from __future__ import annotations

from typing import Any

from launch.sandbox.client_auth import ASSERTION_ALGORITHMS
from launch.sandbox.config import SandboxConfig
from launch.sandbox.grants import TOKEN_AUTH_METHODS
from launch.sandbox.store import SandboxStore

CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "sso-openid-connect",
    "permission-patient",
    "permission-v1",
    "permission-v2",
    "permission-offline",
)
SCOPES_SUPPORTED = (
    "openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access",
    "patient/*.read", "patient/*.rs", "user/*.read", "user/*.rs",
)  # fmt: skip
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE_SYSTEM = "http://terminology.hl7.org/CodeSystem/restful-security-service"

_SEARCH_PARAMS = (
    ("_id", "token"),
    ("_lastUpdated", "date"),
    ("patient", "reference"),
    ("subject", "reference"),
    ("code", "token"),
    ("category", "token"),
    ("date", "date"),
)


def smart_configuration(config: SandboxConfig) -> dict[str, Any]:
    """The ``.well-known/smart-configuration`` document."""
    return {
        "issuer": config.fhir_base,
        "jwks_uri": config.auth_url("jwks"),
        "authorization_endpoint": config.auth_url("authorize"),
        "token_endpoint": config.auth_url("token"),
        "revocation_endpoint": config.auth_url("revoke"),
        "introspection_endpoint": config.auth_url("introspect"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "capabilities": list(CAPABILITIES),
    }


def capability_statement(config: SandboxConfig, store: SandboxStore) -> dict[str, Any]:
    """The server's CapabilityStatement."""
    resources = []
    for resource_type in sorted(set(store.types()) | {"Patient", "Medication", "Binary"}):
        entry: dict[str, Any] = {"type": resource_type, "interaction": [{"code": "read"}]}
        if resource_type != "Binary":
            entry["interaction"].append({"code": "search-type"})
            entry["searchParam"] = [{"name": n, "type": t} for n, t in _SEARCH_PARAMS]
        if resource_type == "Patient":
            entry["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                }
            ]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "software": {"name": "chartcite sandbox EHR"},
        "implementation": {"description": "chartcite sandbox EHR", "url": config.fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": OAUTH_URIS,
                            "extension": [
                                {"url": "authorize", "valueUri": config.auth_url("authorize")},
                                {"url": "token", "valueUri": config.auth_url("token")},
                                {"url": "revoke", "valueUri": config.auth_url("revoke")},
                                {"url": "introspect", "valueUri": config.auth_url("introspect")},
                            ],
                        }
                    ],
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": SECURITY_SERVICE_SYSTEM,
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                },
                "resource": resources,
                "operation": [
                    {
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    },
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                    },
                ],
            }
        ],
    }
