"""Who may see what on the sandbox FHIR API (SMART App Launch 2.x "Scopes and Launch Context").

A verified access token becomes a ``TokenAccess``: its granted scopes and, for patient-context
tokens, its patient. Rules, checked in this order:

1. the resource type must be allowed by a granted scope (``r`` to read, ``s`` to search);
2. a patient-context token sees only its own patient's compartment: reading another patient's
   resource or searching a compartment type without naming the token's patient is forbidden;
3. a ``Binary`` is readable through a ``DocumentReference`` of the patient that points at it
   (scope on ``Binary`` or ``DocumentReference``); a ``Medication`` through the scope on
   ``Medication``, or on ``MedicationRequest`` when one of the patient's requests references it.

Forbidden → 403, unknown id → 404 (``errors.Forbidden`` / ``errors.NotFound``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launch.sandbox.errors import BadRequest, Forbidden, NotFound
from launch.sandbox.scopes import Interaction, allows, readable_types, split_scope
from launch.sandbox.store import Resource, SandboxStore


@dataclass(frozen=True, slots=True)
class TokenAccess:
    """What a verified access token grants: scopes, patient context, client and user."""

    scopes: tuple[str, ...]
    patient: str | None
    client_id: str | None
    fhir_user: str | None

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> TokenAccess:
        patient = claims.get("patient")
        return cls(
            scopes=tuple(split_scope(str(claims.get("scope") or ""))),
            patient=patient if isinstance(patient, str) and patient else None,
            client_id=claims.get("client_id"),
            fhir_user=claims.get("fhirUser"),
        )

    def allows(self, resource_type: str, interaction: Interaction) -> bool:
        return allows(self.scopes, resource_type, interaction)

    def in_context(self, patient_id: str | None) -> bool:
        """Whether a compartment owned by ``patient_id`` is visible to this token."""
        return self.patient is None or self.patient == patient_id


def require_type(access: TokenAccess, resource_type: str, interaction: Interaction) -> None:
    """Forbidden unless a granted scope covers the type for this interaction."""
    if not access.allows(resource_type, interaction):
        raise Forbidden(
            f"The granted scopes do not allow {interaction} of {resource_type}.",
            code="scope_denied",
        )


def read(
    access: TokenAccess, store: SandboxStore, resource_type: str, resource_id: str
) -> Resource:
    """The resource if this token may read it (FHIR ``read`` interaction)."""
    if resource_type == "Binary":
        return _read_binary(access, store, resource_id)
    if resource_type == "Medication" and not access.allows("Medication", "read"):
        return _read_referenced_medication(access, store, resource_id)
    require_type(access, resource_type, "read")
    resource = store.get(resource_type, resource_id)
    if resource is None:
        raise NotFound(f"{resource_type}/{resource_id} is not known.")
    if store.is_compartment_type(resource_type) and not access.in_context(
        store.compartment_owner(resource_type, resource_id)
    ):
        raise Forbidden(
            "The resource is outside the token's patient context.", code="patient_mismatch"
        )
    return resource


def search_patient(
    access: TokenAccess, store: SandboxStore, resource_type: str, patient_param: str | None
) -> str | None:
    """The patient a search is limited to (``None``: unlimited), after the access checks."""
    if resource_type == "Binary":
        raise BadRequest("Binary supports read only.", code="invalid_search")
    require_type(access, resource_type, "search")
    if not store.is_compartment_type(resource_type):
        return patient_param
    if access.patient is None:
        return patient_param
    if patient_param is None:
        raise Forbidden(
            "A patient-context token must search within its patient (patient=…).",
            code="patient_mismatch",
        )
    if patient_param != access.patient:
        raise Forbidden(
            "The search is outside the token's patient context.", code="patient_mismatch"
        )
    return patient_param


def everything_types(access: TokenAccess, store: SandboxStore, patient_id: str) -> list[str]:
    """``Patient/$everything``: the types the token may read, after the patient checks."""
    if not access.in_context(patient_id):
        raise Forbidden(
            "The patient is outside the token's patient context.", code="patient_mismatch"
        )
    if store.get("Patient", patient_id) is None:
        raise NotFound(f"Patient/{patient_id} is not known.")
    types = readable_types(access.scopes, sorted(set(store.types()) | {"Medication"}))
    if "MedicationRequest" in types and "Medication" not in types:
        types.append("Medication")  # the patient's referenced Medications, as ``read`` allows
    return types


def _read_binary(access: TokenAccess, store: SandboxStore, binary_id: str) -> Resource:
    if not (access.allows("Binary", "read") or access.allows("DocumentReference", "read")):
        require_type(access, "Binary", "read")
    binary = store.get("Binary", binary_id)
    if binary is None:
        raise NotFound(f"Binary/{binary_id} is not known.")
    if access.patient is None:
        return binary
    for referrer in store.referrers("Binary", binary_id):
        if referrer.get("resourceType") == "DocumentReference" and access.in_context(
            store.compartment_owner("DocumentReference", str(referrer.get("id")))
        ):
            return binary
    raise Forbidden(
        "No DocumentReference of the token's patient points at this Binary.",
        code="patient_mismatch",
    )


def _read_referenced_medication(
    access: TokenAccess, store: SandboxStore, medication_id: str
) -> Resource:
    if not access.allows("MedicationRequest", "read"):
        require_type(access, "Medication", "read")
    medication = store.get("Medication", medication_id)
    if medication is None:
        raise NotFound(f"Medication/{medication_id} is not known.")
    for referrer in store.referrers("Medication", medication_id):
        if referrer.get("resourceType") == "MedicationRequest" and access.in_context(
            store.compartment_owner("MedicationRequest", str(referrer.get("id")))
        ):
            return medication
    raise Forbidden(
        "No MedicationRequest of the token's patient references this Medication.",
        code="scope_denied",
    )
