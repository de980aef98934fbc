"""Audit records as FHIR R4 ``AuditEvent`` resources (http://hl7.org/fhir/R4/auditevent.html).

One record becomes one AuditEvent: ``type``/``subtype``/``action`` from the action (the table in
``smart_app/data/audit_event_codes.jsonl``), ``recorded``, ``outcome`` (0 success, 4 minor failure,
8 serious failure) with chartcite's own outcome word in ``outcomeDesc``; agents — the user
(``fhirUser``, the requestor) and the client app; ``source.observer`` chartcite; entities — the
patient, and every resource the record names (cited, retrieved, read). The chain position
(``seq``, ``hash``, ``prev_hash``) rides along as an extension, so an export can be checked
against ``chartcite audit checkpoint --export``. Validated against the R4B models (fhir.resources).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from fhir_adapters import validate

CHAIN_EXTENSION = "urn:chartcite:audit-chain"
CLIENT_SYSTEM = "urn:chartcite:client-id"
ANSWER_SYSTEM = "urn:chartcite:answer"
ACTION_SYSTEM = "urn:chartcite:audit-action"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
#: detail keys whose values are resource references, and what the record did with them
_REF_KEYS = {
    "cited": "cited",
    "retrieved": "retrieved",
    "resource": "read",
    "tombstoned": "deleted",
}


@functools.cache
def _codes() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    raw = resources.files("smart_app").joinpath("data/audit_event_codes.jsonl").read_text("utf-8")
    actions: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, str] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        if item["kind"] == "action":
            actions[item["action"]] = item
        elif item["kind"] == "outcome":
            outcomes[item["outcome"]] = item["code"]
    if "*" not in actions or "*" not in outcomes:
        raise ValueError("audit_event_codes.jsonl needs a '*' action and a '*' outcome")
    return actions, outcomes


def _coding(triple: list[str]) -> dict[str, str]:
    system, code, display = triple
    return {"system": system, "code": code, "display": display}


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and "/" in value and value[:1].isupper()


def _who(actor: str) -> dict[str, str]:
    """A fhirUser (``Practitioner/1`` or an absolute URL of one) is a reference; else a name."""
    if _is_ref(actor) or actor.startswith(("http://", "https://")):
        return {"reference": actor}
    return {"display": actor}


def _entity(ref: str, role: str) -> dict[str, Any]:
    return {
        "what": {"reference": ref},
        "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": _OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
        "description": role,
    }


def _detail_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def to_audit_event(row: Mapping[str, Any], detail: Mapping[str, Any]) -> dict[str, Any]:
    """One audit row as an AuditEvent; ``detail`` is the row's detail as the reader may see it."""
    actions, outcomes = _codes()
    code = actions.get(row["action"], actions["*"])
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"chartcite-audit-{row['seq']}",
        "extension": [
            {
                "url": CHAIN_EXTENSION,
                "extension": [
                    {"url": "seq", "valueInteger": int(row["seq"])},
                    {"url": "hash", "valueString": row["hash"]},
                    {"url": "prev_hash", "valueString": row["prev_hash"]},
                ],
            }
        ],
        "type": _coding(code["type"]),
        "subtype": [{"system": ACTION_SYSTEM, "code": row["action"], "display": row["action"]}],
        "action": code["fhir_action"],
        "recorded": row["recorded_at"].isoformat(timespec="microseconds"),
        "outcome": outcomes.get(row["outcome"], outcomes["*"]),
        "outcomeDesc": row["outcome"],
        "source": {
            "site": "chartcite",
            "observer": {"display": "chartcite"},
            "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
    }
    if code.get("subtype"):
        event["subtype"].append(_coding(code["subtype"]))
    agents: list[dict[str, Any]] = []
    if row["actor"]:
        agents.append(
            {
                "type": {"coding": [{"system": _ROLE_TYPE, "code": "humanuser"}]},
                "who": _who(row["actor"]),
                "requestor": True,
            }
        )
    agents.append(
        {
            "type": {"coding": [{"system": _DCM, "code": "110150", "display": "Application"}]},
            "who": (
                {"identifier": {"system": CLIENT_SYSTEM, "value": row["client_id"]}}
                if row["client_id"]
                else {"display": "chartcite"}
            ),
            "requestor": not row["actor"],
        }
    )
    event["agent"] = agents
    entities: list[dict[str, Any]] = []
    scalars: list[dict[str, str]] = []
    if row.get("source"):
        scalars.append({"type": "source", "valueString": row["source"]})
    roles: dict[str, str] = {}  # a reference named twice keeps its first role: cited wins
    for key, role in _REF_KEYS.items():
        values = detail.get(key)
        values = values if isinstance(values, list) else [values]
        if all(_is_ref(v) for v in values):
            for ref in values:
                roles.setdefault(ref, role)
    for key, value in detail.items():
        if key in _REF_KEYS and all(
            _is_ref(v) for v in (value if isinstance(value, list) else [value])
        ):
            continue
        if key == "answer_id" and isinstance(value, str):
            entities.append(
                {
                    "what": {"identifier": {"system": ANSWER_SYSTEM, "value": value}},
                    "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                    "description": "answer",
                }
            )
        else:
            scalars.append({"type": key, "valueString": _detail_value(value)})
    if row["patient_id"]:
        patient: dict[str, Any] = {
            "what": {"reference": f"Patient/{row['patient_id']}"},
            "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"},
        }
        if scalars:
            patient["detail"] = scalars
        entities.insert(0, patient)
    elif scalars:
        entities.insert(0, {"name": "detail", "detail": scalars})
    entities.extend(_entity(ref, role) for ref, role in roles.items())
    if entities:
        event["entity"] = entities
    return event


def bundle(events: Iterable[dict[str, Any]], *, bundle_type: str, bundle_id: str) -> dict[str, Any]:
    """A Bundle of AuditEvents: ``collection`` (an export) or ``searchset`` (the API's answer)."""
    entries = []
    for ev in events:
        entry: dict[str, Any] = {"fullUrl": f"urn:chartcite:AuditEvent/{ev['id']}", "resource": ev}
        if bundle_type == "searchset":
            entry["search"] = {"mode": "match"}
        entries.append(entry)
    out: dict[str, Any] = {"resourceType": "Bundle", "id": bundle_id, "type": bundle_type}
    if bundle_type == "searchset":
        out["total"] = len(entries)
    out["entry"] = entries
    return out


def validated(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` unchanged once it passes its R4B model (``InvalidResource`` otherwise)."""
    return validate(resource)
