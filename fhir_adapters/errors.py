"""Errors of the FHIR adapters.

FhirAdapterError (code, status)
├── FhirAuthError        401/403 from the FHIR server (token expired, scope missing)
│   └── FhirTokenRejected  401 even after a token refresh: nothing more can be read
└── FhirServerError      the FHIR server failed or answered something unusable (502)
    ├── IncompleteResults  a search's pages held fewer matches than its Bundle.total
    └── FhirNotFound       the EHR has no such endpoint or operation (404/410)
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


class FhirTokenRejected(FhirAuthError):
    code = "fhir_token_rejected"


class FhirServerError(FhirAdapterError):
    code = "fhir_server_error"
    status = 502


class IncompleteResults(FhirServerError):
    code = "fhir_incomplete"


class FhirNotFound(FhirServerError):
    code = "fhir_not_found"
