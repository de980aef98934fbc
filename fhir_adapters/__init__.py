"""FHIR adapters: client (fhirpy), compartment pulls, normalization (fhir.resources R4B), the store."""

from fhir_adapters.access import AccessFilter
from fhir_adapters.client import FhirClient
from fhir_adapters.errors import FhirAdapterError, FhirAuthError, FhirServerError
from fhir_adapters.normalize import (
    CLINICAL_TYPES,
    Fact,
    InvalidResource,
    has_category,
    project,
    validate,
)
from fhir_adapters.repository import (
    close_dead_runs,
    create_sync_run,
    existing_refs,
    fact_codes,
    get_resource,
    get_resources,
    get_sync_run,
    latest_sync_run,
    list_facts,
    update_sync_run,
    visible_sql,
)
from fhir_adapters.sync import Puller, PullResult

__all__ = [
    "CLINICAL_TYPES",
    "AccessFilter",
    "Fact",
    "FhirAdapterError",
    "FhirAuthError",
    "FhirClient",
    "FhirServerError",
    "InvalidResource",
    "PullResult",
    "Puller",
    "close_dead_runs",
    "create_sync_run",
    "existing_refs",
    "fact_codes",
    "get_resource",
    "get_resources",
    "get_sync_run",
    "has_category",
    "latest_sync_run",
    "list_facts",
    "project",
    "update_sync_run",
    "validate",
    "visible_sql",
]
