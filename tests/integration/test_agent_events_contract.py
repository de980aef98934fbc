"""The agent-event and protected-resource operations under a seeded schemathesis pass with an
app's bearer token (the suite-wide pass, ``test_contract_fuzz.py``, uses a launch session): no
5xx, no undocumented status or content type, and nothing recorded for another patient."""

from __future__ import annotations

from collections import Counter

import schemathesis

from tests.conftest import RunningDemo
from tests.integration.test_contract_fuzz import fuzz
from tests.integration.test_mcp import rest, token

EXAMPLES = 150


def test_agent_event_operations_under_fuzzing(demo: RunningDemo) -> None:
    # A patient of its own: the generated events leave hundreds of audit records.
    patient = str(demo.store.patients()[5]["id"])
    schema = schemathesis.openapi.from_url(f"{demo.base_url}/openapi.json")
    bearer = token(demo, patient)
    headers = {"Authorization": f"Bearer {bearer}"}
    operations = [
        r.ok()
        for r in schema.get_all_operations()
        if r.ok().path in ("/api/agent-events",) or r.ok().path.startswith("/.well-known/oauth")
    ]
    assert len(operations) == 4
    calls = fuzz(operations, headers, EXAMPLES)
    assert not [c for c in calls if c[1] >= 500]
    print(sorted(Counter(calls).items()))
    assert {s for _, s in calls} & {200, 201}
    with rest(demo, bearer) as c:
        events = c.get("/api/agent-events", params={"limit": 500}).json()["events"]
    assert {e["patient"] for e in events} <= {f"Patient/{patient}"}
