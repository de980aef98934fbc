"""A bounded, seeded schemathesis pass over every API operation with a real session: no 5xx, no
status the OpenAPI document does not list, content types and bodies as documented."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.integration.conftest import Synced

EXAMPLES = 200  # per operation; seeded (derandomize): the same cases every run
STATEFUL_SCENARIOS = 60


def fuzz(operations: list[Any], headers: dict[str, str], examples: int) -> list[tuple[str, int]]:
    """Each operation's generated cases (seeded), sent with ``headers`` and checked against the
    document: (operation, status) per request. Checks fail the test as they happen."""
    calls: list[tuple[str, int]] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call_and_validate(
                headers=headers,
                excluded_checks=[schemathesis.checks.positive_data_acceptance],
            )
            calls.append((case.operation.label, response.status_code))

        run()
    return calls


def test_api_contract(patient_a: Synced) -> None:
    url = str(patient_a.client.base_url).rstrip("/") + "/openapi.json"
    schema = schemathesis.openapi.from_url(url)
    session = {"X-Chartcite-Session": patient_a.client.headers["X-Chartcite-Session"]}
    # /logout would end the shared session the other tests use (it is tested on its own).
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [op for op in operations if op.path != "/logout"]
    assert len(operations) >= 8
    calls = fuzz(operations, session, EXAMPLES)
    assert not [c for c in calls if c[1] >= 500]
    assert patient_a.client.get("/api/context").status_code == 200  # the session survived
    print(f"{len(calls)} generated requests over {len(operations)} operations")


def test_api_contract_stateful(patient_a: Synced) -> None:
    """Call sequences that follow the document's links (POST /api/ask → GET /api/answers/{id},
    POST /api/sync → GET /api/sync/{id}), so the consumers are reached with real ids, not only
    random ones that 404: the same checks on every step."""
    url = str(patient_a.client.base_url).rstrip("/") + "/openapi.json"
    schema = schemathesis.openapi.from_url(url).exclude(path="/logout")
    session = {"X-Chartcite-Session": patient_a.client.headers["X-Chartcite-Session"]}
    steps: list[tuple[str, str, int]] = []

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": session}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            steps.append((case.operation.label, case.formatted_path, response.status_code))
            case.validate_response(
                response,
                excluded_checks=[schemathesis.checks.positive_data_acceptance],
                transport_kwargs=kwargs or None,
            )

    Machine.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert not [s for s in steps if s[2] >= 500]
    # The links were followed: answers and sync runs were read back by the ids just made.
    reached = {(label, status) for label, _, status in steps}
    assert ("GET /api/answers/{answer_id}", 200) in reached, sorted(reached)
    assert ("GET /api/sync/{sync_id}", 200) in reached, sorted(reached)
    assert patient_a.client.get("/api/context").status_code == 200
    print(f"stateful: {len(steps)} requests in {STATEFUL_SCENARIOS} scenarios")
