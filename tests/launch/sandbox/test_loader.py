"""Tests of the FHIR folder loader (launch/sandbox/loader.py) on bundles and NDJSON it writes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from launch.sandbox.loader import LoaderError, load_fhir_dir
from launch.sandbox.synthetic import generate_patients

Resource = dict[str, Any]

PATIENT_UUID = "5a1b2c3d-0000-4000-8000-000000000001"
ENCOUNTER_UUID = "5a1b2c3d-0000-4000-8000-000000000002"
CONDITION_UUID = "5a1b2c3d-0000-4000-8000-000000000003"
NPI = "http://hl7.org/fhir/sid/us-npi"


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def post(resource: Resource, uuid: str) -> Resource:
    return {
        "fullUrl": f"urn:uuid:{uuid}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def synthea_style_bundle() -> Resource:
    """A transaction bundle as Synthea writes it: urn:uuid fullUrls and conditional references."""
    patient = {"resourceType": "Patient", "id": PATIENT_UUID, "name": [{"family": "Doe"}]}
    encounter = {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": "finished",  # id is not the uuid
        "class": {"code": "AMB"},
        "subject": {"reference": f"urn:uuid:{PATIENT_UUID}"},
        "participant": [{"individual": {"reference": f"Practitioner?identifier={NPI}|9999000001"}}],
        "serviceProvider": {"reference": "Organization?identifier=https://example.org|missing"},
        "diagnosis": [{"condition": {"reference": f"urn:uuid:{CONDITION_UUID}"}}],
    }
    condition = {  # no id: it takes the uuid of its fullUrl
        "resourceType": "Condition",
        "code": {"text": "Hypertension"},
        "subject": {"reference": f"urn:uuid:{PATIENT_UUID}"},
        "encounter": {"reference": f"urn:uuid:{ENCOUNTER_UUID}"},
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            post(patient, PATIENT_UUID),
            post(encounter, ENCOUNTER_UUID),
            post(condition, CONDITION_UUID),
            {"request": {"method": "DELETE", "url": "Basic/old"}},
        ],
    }


def practitioners_bundle(*npis: tuple[str, str]) -> Resource:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{pid}",
                "resource": {
                    "resourceType": "Practitioner",
                    "id": pid,
                    "identifier": [{"system": NPI, "value": npi}],
                },
            }
            for pid, npi in npis
        ],
    }


def by_key(resources: list[Resource]) -> dict[str, Resource]:
    return {f"{r['resourceType']}/{r['id']}": r for r in resources}


def test_transaction_bundle_references_become_local(tmp_path: Path) -> None:
    write_json(tmp_path / "patient.json", synthea_style_bundle())
    write_json(
        tmp_path / "_shared" / "practitioners.json",
        practitioners_bundle(("prac-a", "9999000001"), ("prac-b", "9999000002")),
    )

    loaded = by_key(load_fhir_dir(tmp_path))

    assert set(loaded) == {
        f"Patient/{PATIENT_UUID}",
        "Encounter/enc-1",
        f"Condition/{CONDITION_UUID}",
        "Practitioner/prac-a",
        "Practitioner/prac-b",
    }
    encounter = loaded["Encounter/enc-1"]
    assert encounter["subject"] == {"reference": f"Patient/{PATIENT_UUID}"}
    assert encounter["diagnosis"][0]["condition"]["reference"] == f"Condition/{CONDITION_UUID}"
    assert encounter["participant"][0]["individual"]["reference"] == "Practitioner/prac-a"
    # nothing has that identifier: the conditional reference is kept as it is
    assert encounter["serviceProvider"]["reference"] == (
        "Organization?identifier=https://example.org|missing"
    )
    condition = loaded[f"Condition/{CONDITION_UUID}"]
    assert condition["encounter"]["reference"] == "Encounter/enc-1"


def test_ambiguous_conditional_reference_is_left_alone(tmp_path: Path) -> None:
    write_json(tmp_path / "patient.json", synthea_style_bundle())
    write_json(tmp_path / "ca.json", practitioners_bundle(("prac-ca", "9999000001")))
    write_json(tmp_path / "ny.json", practitioners_bundle(("prac-ny", "9999000001")))

    encounter = by_key(load_fhir_dir(tmp_path))["Encounter/enc-1"]

    reference = encounter["participant"][0]["individual"]["reference"]
    assert reference == f"Practitioner?identifier={NPI}|9999000001"


def test_ndjson_single_resources_and_collection_bundles(tmp_path: Path) -> None:
    observations = [
        {
            "resourceType": "Observation",
            "id": f"obs-{n}",
            "status": "final",
            "code": {"text": "A1c"},
            "subject": {"reference": "Patient/p1"},
        }
        for n in range(3)
    ]
    lines = [json.dumps(o) for o in observations]
    (tmp_path / "Observation.ndjson").write_text(
        "\n".join([lines[0], "", *lines[1:]]) + "\n", encoding="utf-8"
    )
    write_json(tmp_path / "patient.json", {"resourceType": "Patient", "id": "p1"})
    write_json(
        tmp_path / "more" / "searchset.json",
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {
                    "fullUrl": "https://ehr.example/fhir/Condition/c1",
                    "resource": {
                        "resourceType": "Condition",
                        "id": "c1",
                        "subject": {"reference": "https://ehr.example/fhir/Patient/p1"},
                    },
                    "search": {"mode": "match"},
                }
            ],
        },
    )
    (tmp_path / "README.md").write_text("not FHIR", encoding="utf-8")
    (tmp_path / ".hidden.json").write_text("{broken", encoding="utf-8")

    loaded = by_key(load_fhir_dir(tmp_path))

    assert set(loaded) == {
        "Observation/obs-0",
        "Observation/obs-1",
        "Observation/obs-2",
        "Patient/p1",
        "Condition/c1",
    }
    assert loaded["Condition/c1"]["subject"] == {"reference": "Patient/p1"}


def test_later_copy_of_a_resource_wins(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"resourceType": "Patient", "id": "p1", "gender": "male"})
    write_json(tmp_path / "b.json", {"resourceType": "Patient", "id": "p1", "gender": "female"})

    assert load_fhir_dir(tmp_path) == [{"resourceType": "Patient", "id": "p1", "gender": "female"}]


def test_generated_patients_survive_a_round_trip(tmp_path: Path) -> None:
    resources = generate_patients(n_patients=2, seed=3, today=dt.date(2025, 1, 10))
    half = len(resources) // 2
    write_json(
        tmp_path / "bundle.json",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r}
                for r in resources[:half]
            ],
        },
    )
    (tmp_path / "rest.ndjson").write_text(
        "\n".join(json.dumps(r) for r in resources[half:]), encoding="utf-8"
    )

    assert load_fhir_dir(tmp_path) == resources


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("broken.json", b'{"resourceType": "Patient", "name": "SECRET-VALUE"', "not valid JSON"),
        ("list.json", b'[{"resourceType": "Patient", "id": "SECRET-VALUE"}]', "no resourceType"),
        ("other.json", b'{"kind": "SECRET-VALUE"}', "no resourceType"),
        (
            "latin1.json",
            '{"resourceType": "Patient", "id": "SECRET-VALUE-é"}'.encode("latin-1"),
            "not UTF-8",
        ),
        (
            "bad-entry.json",
            b'{"resourceType": "Bundle", "entry": [{"resource": {"id": "SECRET-VALUE"}}]}',
            "entry 0 is not a FHIR resource",
        ),
        (
            "lines.ndjson",
            b'{"resourceType": "Patient", "id": "a"}\n{"id": "SECRET-VALUE"}\n',
            "line 2",
        ),
    ],
)
def test_bad_files_raise_a_loader_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    (tmp_path / name).write_bytes(content)

    with pytest.raises(LoaderError) as caught:
        load_fhir_dir(tmp_path)

    message = str(caught.value)
    assert name in message and expected in message
    assert "SECRET-VALUE" not in message
    assert isinstance(caught.value, ValueError)


def test_missing_or_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="no .json or .ndjson files"):
        load_fhir_dir(tmp_path)
    with pytest.raises(LoaderError, match="no such file or folder"):
        load_fhir_dir(tmp_path / "absent")
