"""A bounded, seeded schemathesis pass over every API operation with a real session: no 5xx, no
status the OpenAPI document does not list, content types and bodies as documented."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.integration.conftest import Synced

EXAMPLES = 200  # per operation; seeded (derandomize): the same cases every run


def test_api_contract(patient_a: Synced) -> None:
    url = str(patient_a.client.base_url).rstrip("/") + "/openapi.json"
    schema = schemathesis.openapi.from_url(url)
    session = {"X-Chartcite-Session": patient_a.client.headers["X-Chartcite-Session"]}
    # /logout would end the shared session the other tests use (it is tested on its own).
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [op for op in operations if op.path != "/logout"]
    assert len(operations) >= 8
    calls: list[tuple[str, int]] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: object) -> None:
            response = case.call_and_validate(  # type: ignore[attr-defined]
                headers=session,
                excluded_checks=[schemathesis.checks.positive_data_acceptance],
            )
            calls.append((case.operation.label, response.status_code))  # type: ignore[attr-defined]

        run()
    assert not [c for c in calls if c[1] >= 500]
    assert patient_a.client.get("/api/context").status_code == 200  # the session survived
    print(f"{len(calls)} generated requests over {len(operations)} operations")
