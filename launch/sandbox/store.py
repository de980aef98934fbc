"""In-memory FHIR R4 resource store of the sandbox EHR, indexed by type, id and patient compartment.

- Patient compartment (FHIR R4 CompartmentDefinition ``patient``): a resource belongs to patient
  ``P`` when it is ``Patient/P`` or references ``Patient/P`` through ``subject``, ``patient`` or
  ``beneficiary``. ``Medication``, ``Practitioner``, ``Binary``… are outside any compartment.
- A ``Binary`` is reached through the ``DocumentReference`` whose ``content[].attachment.url`` is
  ``Binary/<id>``; a ``Medication`` through ``MedicationRequest.medicationReference``
  (see ``referrers``).
- Search (FHIR R4 search §3.1.1): ``_id``, ``_lastUpdated``, ``code``, ``date``, ``category``;
  results come in insertion order, which is stable while the store is unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

from launch.sandbox.errors import BadRequest
from launch.sandbox.search_params import any_of, clinical_date, date_matches, token_matches

Resource = dict[str, Any]
Key = tuple[str, str]

#: Reference elements that put a resource into a patient's compartment.
COMPARTMENT_FIELDS = ("subject", "patient", "beneficiary")

#: Resource types of the FHIR R4 patient compartment (CompartmentDefinition-patient).
PATIENT_COMPARTMENT_TYPES = frozenset(
    {
        "Account", "AdverseEvent", "AllergyIntolerance", "Appointment", "AppointmentResponse",
        "AuditEvent", "Basic", "BodyStructure", "CarePlan", "CareTeam", "ChargeItem", "Claim",
        "ClaimResponse", "ClinicalImpression", "Communication", "CommunicationRequest",
        "Composition", "Condition", "Consent", "Coverage", "CoverageEligibilityRequest",
        "CoverageEligibilityResponse", "DetectedIssue", "DeviceRequest", "DeviceUseStatement",
        "DiagnosticReport", "DocumentManifest", "DocumentReference", "Encounter",
        "EnrollmentRequest", "EpisodeOfCare", "ExplanationOfBenefit", "FamilyMemberHistory",
        "Flag", "Goal", "Group", "ImagingStudy", "Immunization", "ImmunizationEvaluation",
        "ImmunizationRecommendation", "Invoice", "List", "MeasureReport", "Media",
        "MedicationAdministration", "MedicationDispense", "MedicationRequest",
        "MedicationStatement", "MolecularSequence", "NutritionOrder", "Observation", "Patient",
        "Person", "Procedure", "Provenance", "QuestionnaireResponse", "RelatedPerson",
        "RequestGroup", "ResearchSubject", "RiskAssessment", "Schedule", "ServiceRequest",
        "Specimen", "SupplyDelivery", "SupplyRequest", "VisionPrescription",
    }
)  # fmt: skip

#: Search parameters ``SandboxStore.search`` understands (anything else is the caller's job).
SUPPORTED_SEARCH_PARAMS = frozenset({"_id", "_lastUpdated", "code", "date", "category"})

_MEDICATION_TYPES = frozenset(
    {"MedicationRequest", "MedicationStatement", "MedicationAdministration", "MedicationDispense"}
)
_CODE_FIELD = {"Immunization": "vaccineCode", "DocumentReference": "type"}


class SandboxStore:
    """Holds FHIR resource dicts and answers reads, compartment questions and searches."""

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        self._resources: dict[Key, Resource] = {}
        self._by_type: dict[str, dict[str, None]] = {}
        self._compartments: dict[str, dict[str, dict[str, None]]] = {}
        self._owner: dict[Key, str] = {}
        self._refs_out: dict[Key, set[Key]] = {}
        self._refs_in: dict[Key, dict[Key, None]] = {}
        for resource in resources:
            self.add(resource)

    # -- writing -----------------------------------------------------------------------------

    def add(self, resource: Mapping[str, Any]) -> None:
        """Insert or replace a resource (a deep copy is kept)."""
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str) or not rtype or not rid:
            raise ValueError("a resource needs a resourceType and an id")
        key = (rtype, rid)
        if key in self._resources:
            self._unindex(key)
        stored = copy.deepcopy(dict(resource))
        self._resources[key] = stored
        self._by_type.setdefault(rtype, {})[rid] = None
        owner = rid if rtype == "Patient" else _compartment_owner(stored)
        if owner is not None:
            self._owner[key] = owner
            self._compartments.setdefault(owner, {}).setdefault(rtype, {})[rid] = None
        targets = set(_outgoing_references(stored))
        self._refs_out[key] = targets
        for target in targets:
            self._refs_in.setdefault(target, {})[key] = None

    def remove(self, resource_type: str, resource_id: str) -> Resource | None:
        """Delete a resource (as an EHR does between two syncs); returns what was removed."""
        key = (resource_type, resource_id)
        if key not in self._resources:
            return None
        self._unindex(key)
        self._by_type.get(resource_type, {}).pop(resource_id, None)
        return self._resources.pop(key)

    def _unindex(self, key: Key) -> None:
        owner = self._owner.pop(key, None)
        if owner is not None:
            self._compartments[owner][key[0]].pop(key[1], None)
        for target in self._refs_out.pop(key, set()):
            self._refs_in.get(target, {}).pop(key, None)

    # -- reading -----------------------------------------------------------------------------

    def get(self, resource_type: str, resource_id: str) -> Resource | None:
        """The resource ``resource_type/resource_id`` or ``None``."""
        return self._resources.get((resource_type, resource_id))

    def __len__(self) -> int:
        return len(self._resources)

    def types(self) -> list[str]:
        """Resource types present in the store, sorted."""
        return sorted(t for t, ids in self._by_type.items() if ids)

    def of_type(self, resource_type: str) -> list[Resource]:
        """All resources of one type, in insertion order."""
        ids = self._by_type.get(resource_type, {})
        return [self._resources[(resource_type, rid)] for rid in ids]

    def patients(self) -> list[Resource]:
        """All Patient resources, in insertion order."""
        return self.of_type("Patient")

    def is_compartment_type(self, resource_type: str) -> bool:
        """Whether resources of this type belong to a patient compartment."""
        return resource_type in PATIENT_COMPARTMENT_TYPES or any(
            resource_type in types for types in self._compartments.values()
        )

    def compartment_owner(self, resource_type: str, resource_id: str) -> str | None:
        """The id of the patient whose compartment holds this resource, if any."""
        return self._owner.get((resource_type, resource_id))

    def referrers(self, resource_type: str, resource_id: str) -> list[Resource]:
        """Resources that reference ``resource_type/resource_id`` (references and Binary URLs)."""
        keys = self._refs_in.get((resource_type, resource_id), {})
        return [self._resources[k] for k in keys if k in self._resources]

    # -- searching ---------------------------------------------------------------------------

    def search(
        self,
        resource_type: str,
        patient: str | None = None,
        params: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    ) -> list[Resource]:
        """Resources of one type, optionally inside one patient's compartment, matching ``params``.

        Each ``(name, value)`` pair is one criterion (AND); commas in a value are OR.
        Raises ``BadRequest`` for a parameter outside ``SUPPORTED_SEARCH_PARAMS``.
        """
        pairs = list(params.items() if isinstance(params, Mapping) else params)
        for name, _ in pairs:
            if name not in SUPPORTED_SEARCH_PARAMS:
                raise BadRequest(f"Unsupported search parameter {name!r}", code="invalid_search")
        return [r for r in self._candidates(resource_type, patient) if self._matches(r, pairs)]

    def _candidates(self, resource_type: str, patient: str | None) -> Iterator[Resource]:
        if patient is None:
            ids: Iterable[str] = self._by_type.get(resource_type, {})
        else:
            ids = self._compartments.get(patient, {}).get(resource_type, {})
        for rid in ids:
            yield self._resources[(resource_type, rid)]

    def _matches(self, resource: Resource, pairs: list[tuple[str, str]]) -> bool:
        return all(
            any(self._match_one(resource, name, v) for v in any_of(value)) for name, value in pairs
        )

    def _match_one(self, resource: Resource, name: str, value: str) -> bool:
        if name == "_id":
            return resource.get("id") == value
        if name == "_lastUpdated":
            return date_matches(_last_updated(resource), value)
        if name == "date":
            return date_matches(clinical_date(resource), value)
        if name == "category":
            return token_matches(resource.get("category"), value)
        return any(token_matches(concept, value) for concept in self._code_concepts(resource))

    def _code_concepts(self, resource: Resource) -> list[Any]:
        rtype = resource["resourceType"]
        if rtype not in _MEDICATION_TYPES:
            return [resource.get(_CODE_FIELD.get(rtype, "code"))]
        concepts: list[Any] = [resource.get("medicationCodeableConcept")]
        ref = _reference_key((resource.get("medicationReference") or {}).get("reference"))
        medication = self._resources.get(ref) if ref else None
        if medication is not None:
            concepts.append(medication.get("code"))
        return concepts

    def everything(
        self,
        patient: str,
        types: Collection[str] | None = None,
        since: str | None = None,
    ) -> list[Resource]:
        """``Patient/$everything``: the patient, its compartment, then referenced Medications.

        ``types`` limits the result (``_type``); ``since`` keeps resources whose
        ``meta.lastUpdated`` is at or after it (``_since``).
        """
        found: dict[Key, Resource] = {}
        for rtype, ids in self._compartments.get(patient, {}).items():
            for rid in ids:
                found[(rtype, rid)] = self._resources[(rtype, rid)]
        ordered = sorted(found, key=lambda k: k[0] != "Patient")  # Patient first, stable otherwise
        for key in list(ordered):
            for target in self._refs_out.get(key, ()):
                if target[0] == "Medication" and target in self._resources and target not in found:
                    found[target] = self._resources[target]
                    ordered.append(target)
        result = [found[k] for k in ordered if types is None or k[0] in types]
        if since is not None:
            result = [r for r in result if date_matches(_last_updated(r), f"ge{since}")]
        return result


def _reference_key(reference: Any) -> Key | None:
    """``("Patient", "p1")`` for ``Patient/p1`` or an absolute URL ending in it."""
    if not isinstance(reference, str) or "/" not in reference:
        return None
    parts = reference.split("?")[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-2][:1].isupper() or not parts[-1]:
        return None
    return parts[-2], parts[-1]


def _last_updated(resource: Resource) -> str | None:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, Mapping) else None
    return value if isinstance(value, str) else None


def _compartment_owner(resource: Resource) -> str | None:
    for field in COMPARTMENT_FIELDS:
        node = resource.get(field)
        key = _reference_key(node.get("reference")) if isinstance(node, Mapping) else None
        if key is not None and key[0] == "Patient":
            return key[1]
    return None


def _outgoing_references(node: Any) -> Iterator[Key]:
    """Every ``reference`` in the tree, plus attachment URLs pointing at a Binary."""
    if isinstance(node, Mapping):
        for name, value in node.items():
            if not isinstance(value, str):
                yield from _outgoing_references(value)
            elif name == "reference" or (name == "url" and "Binary/" in value):
                key = _reference_key(value)
                if key is not None:
                    yield key
    elif isinstance(node, list):
        for item in node:
            yield from _outgoing_references(item)
