"""Errors of the FHIR adapters.

FhirAdapterError (code, status)
├── FhirAuthError        401/403 from the FHIR server (token expired, scope missing)
└── FhirServerError      the FHIR server failed or answered something unusable (502)
"""

from __future__ import annotations


class FhirAdapterError(Exception):
    code = "fhir_error"
    status = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FhirAuthError(FhirAdapterError):
    code = "fhir_unauthorized"
    status = 502


class FhirServerError(FhirAdapterError):
    code = "fhir_server_error"
    status = 502
