"""Registered EHRs whose patient ids overlap: nothing crosses — rows, answers, audit, citations.

EHR 1 (``/ehr``) and EHR 2 (``/ehr2``) are independent sandbox EHRs with different generated
charts under the same ids (``pat-0001``…). chartcite is a public client at EHR 1 and a confidential
one (``client_secret_basic``, a secret that needs RFC 6749 §2.3.1 form-encoding) at EHR 2, and
confidential-asymmetric (``private_key_jwt``) at EHR 3, which reads chartcite's JWKS over HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import text

from launch.db import Database, create_engine
from launch.demo_client import ask, code_flow_token, launch_patient, sync_patient
from launch.sandbox import SandboxStore
from launch.server import BackgroundServer, build_demo, free_port, sandbox_store
from launch.settings import Settings
from smart_app.ehrs import source_key
from smart_app.keys import AppKeys
from tests.conftest import migrated_scratch_database
from tests.integration.helpers import owned


@dataclass
class TwoEhrs:
    base_url: str
    store1: SandboxStore
    store2: SandboxStore
    database: Database
    data_dir: Path


@pytest.fixture(scope="module")
def two_ehrs(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoEhrs]:
    db = migrated_scratch_database(database, "two_ehrs")
    port = free_port()
    settings = Settings(env="dev", data_dir=tmp_path_factory.mktemp("two-ehrs"), port=port)
    store1 = sandbox_store(patients=3, seed=7)
    store2 = sandbox_store(patients=3, seed=99)
    store3 = sandbox_store(patients=2, seed=5)
    built = build_demo(settings, store1, database=db, second_store=store2, third_store=store3)
    server = BackgroundServer(built.app, "127.0.0.1", port)
    server.start()
    yield TwoEhrs(settings.base_url, store1, store2, db, settings.data_dir)
    server.stop()


def _rows(db: Database, sql: str, **params: object) -> list[tuple[object, ...]]:
    async def run() -> list[tuple[object, ...]]:
        engine = create_engine(db, pool_size=1)
        try:
            async with engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_same_patient_id_two_ehrs_never_meet(two_ehrs: TwoEhrs) -> None:
    pid = "pat-0001"
    assert two_ehrs.store1.get("Patient", pid) and two_ehrs.store2.get("Patient", pid)
    meds1 = {m["id"] for m in owned(two_ehrs.store1, pid, "MedicationRequest")}
    meds2 = {m["id"] for m in owned(two_ehrs.store2, pid, "MedicationRequest")}
    c1, r1 = launch_patient(two_ehrs.base_url, pid)
    c2, r2 = launch_patient(two_ehrs.base_url, pid, ehr_path="/ehr2")
    with closing(c1), closing(c2):
        assert r1.status_code == 200 and r2.status_code == 200, r2.text[:300]
        assert sync_patient(c1, full=True)["status"] == "done"
        assert sync_patient(c2, full=True)["status"] == "done"
        ctx1, ctx2 = c1.get("/api/context").json(), c2.get("/api/context").json()
        name = two_ehrs.store2.get("Patient", pid)["name"][0]["family"]  # type: ignore[index]
        assert name in (ctx2["banner"]["name"] or "")
        assert ctx1["banner"] != ctx2["banner"]

        # Rows: each EHR's chart under its own source key, exactly its own resources.
        src1 = source_key(two_ehrs.base_url + "/ehr/fhir")
        src2 = source_key(two_ehrs.base_url + "/ehr2/fhir")
        stored = _rows(
            two_ehrs.database,
            "SELECT source, id FROM fhir_resource WHERE patient_id = :p AND resource_type = "
            "'MedicationRequest'",
            p=pid,
        )
        assert {i for s, i in stored if s == src1} == meds1
        assert {i for s, i in stored if s == src2} == meds2

        # Answers cite only the session's own EHR's resources.
        a2 = ask(c2, "which medications were prescribed?").json()
        cited2 = {c.split("/", 1)[1] for c in a2["citations"] if c.startswith("MedicationRequest/")}
        assert cited2 and cited2 <= meds2
        assert not cited2 & (meds1 - meds2)
        for ref in a2["citations"]:
            rtype, rid = ref.split("/", 1)
            assert c2.get(f"/api/resources/{rtype}/{rid}").status_code == 200, ref
            assert two_ehrs.store2.get(rtype, rid) is not None, ref

        # A resource only EHR 1 has is not readable through EHR 2's session (same patient id).
        only1 = sorted(meds1 - meds2)
        if only1:
            assert c2.get(f"/api/resources/MedicationRequest/{only1[0]}").status_code == 404
        # Stored answers: EHR 2's answer is not readable by EHR 1's session.
        assert c1.get(f"/api/answers/{a2['answer_id']}").status_code == 404
        # Audit: each session sees only its EHR's records.
        audit1 = json.dumps(c1.get("/api/audit").json())
        assert a2["answer_id"] not in audit1
        assert "ehr2" not in audit1


def test_confidential_client_with_form_encoded_secret(two_ehrs: TwoEhrs) -> None:
    """EHR 2 only knows chartcite with a secret: the launch succeeding is the proof that the
    secret went over Basic auth form-encoded (the sandbox decodes it, per RFC 6749 §2.3.1)."""
    client, final = launch_patient(two_ehrs.base_url, "pat-0002", ehr_path="/ehr2")
    with closing(client):
        assert final.status_code == 200, final.text[:300]
        assert client.get("/api/context").json()["patient"] == "Patient/pat-0002"
    rows = _rows(
        two_ehrs.database,
        "SELECT detail->>'client_type' FROM audit_event WHERE action = 'launch' "
        "AND outcome = 'ok' AND detail->>'iss' LIKE '%/ehr2/fhir'",
    )
    assert rows and all(r[0] == "confidential-symmetric" for r in rows)


def test_a_token_of_one_ehr_is_refused_as_the_others(two_ehrs: TwoEhrs) -> None:
    """Bearer: a JWT of EHR 1 presented while naming EHR 2 is judged by its own iss (EHR 1);
    a garbage token naming EHR 2 is inactive there."""
    with httpx2.Client(
        base_url=two_ehrs.base_url,
        timeout=30,
        headers={
            "Authorization": "Bearer opaque-garbage",
            "X-Chartcite-Iss": two_ehrs.base_url + "/ehr2/fhir",
        },
    ) as app:
        r = app.get("/api/context")
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    with httpx2.Client(
        base_url=two_ehrs.base_url, timeout=30, headers={"Authorization": "Bearer opaque-garbage"}
    ) as app:
        # Two EHRs registered and nothing names one: refused, not guessed.
        r = app.get("/api/context")
        assert r.status_code == 401 and "X-Chartcite-Iss" in r.json()["error"]["message"]


def test_private_key_jwt_launch_and_app_key_rotation(two_ehrs: TwoEhrs) -> None:
    """EHR 3 knows chartcite only by its JWKS URL: a launch that signs in proves the assertion
    verified. After `keys rotate` the new key signs and EHR 3 re-reads the JWKS for its kid."""
    client, final = launch_patient(two_ehrs.base_url, "pat-0001", ehr_path="/ehr3")
    with closing(client):
        assert final.status_code == 200, final.text[:300]
        assert client.get("/api/context").json()["patient"] == "Patient/pat-0001"
        jwks = client.get("/.well-known/jwks.json").json()
        assert {k["alg"] for k in jwks["keys"]} == {"RS384", "ES384"}
        assert not any("d" in k for k in jwks["keys"])  # public halves only
    rows = _rows(
        two_ehrs.database,
        "SELECT detail->>'client_type' FROM audit_event WHERE action = 'launch' "
        "AND outcome = 'ok' AND detail->>'iss' LIKE '%/ehr3/fhir'",
    )
    assert rows and all(r[0] == "confidential-asymmetric" for r in rows)

    # Rotate from another process (as `chartcite keys rotate` does): the running app signs with
    # the new key at once, and EHR 3, whose cached JWKS lacks that kid, fetches it again.
    keys = AppKeys.load_or_create(two_ehrs.data_dir / "app-keys.json")
    new_kids = set(keys.rotate())
    again, final2 = launch_patient(two_ehrs.base_url, "pat-0002", ehr_path="/ehr3")
    with closing(again):
        assert final2.status_code == 200, final2.text[:300]
        published = {k["kid"] for k in again.get("/.well-known/jwks.json").json()["keys"]}
        assert new_kids <= published and len(published) == 4  # old ones kept until retired


def _ehr2_token(base_url: str, patient: str) -> str:
    """An access token EHR 2 issues to an app (here: chartcite-b's own code flow)."""
    from launch.server import SECOND_EHR_SECRET

    return code_flow_token(
        base_url, "/ehr2", patient, client_id="chartcite-b", secret=SECOND_EHR_SECRET
    )


def test_bearer_tokens_of_a_jwt_ehr_are_checked_by_its_jwks(two_ehrs: TwoEhrs) -> None:
    """EHR 2 is registered with token_format jwt: its tokens are verified against its JWKS (the
    iss inside the token picks the EHR), and then act exactly like a session of EHR 2."""
    token = _ehr2_token(two_ehrs.base_url, "pat-0003")
    with httpx2.Client(
        base_url=two_ehrs.base_url, timeout=60, headers={"Authorization": f"Bearer {token}"}
    ) as app:
        ctx = app.get("/api/context")
        assert ctx.status_code == 200, ctx.text
        assert ctx.json()["patient"] == "Patient/pat-0003" and ctx.json()["via"] == "bearer"
        assert sync_patient(app, full=True)["status"] == "done"
        meds2 = {m["id"] for m in owned(two_ehrs.store2, "pat-0003", "MedicationRequest")}
        cited = {
            c.split("/", 1)[1]
            for c in ask(app, "meds").json()["citations"]
            if c.startswith("MedicationRequest/")
        }
        assert cited <= meds2
    # The same token with one byte changed no longer verifies.
    head, body, sig = token.split(".")
    tampered = ".".join([head, body, ("A" if sig[0] != "A" else "B") + sig[1:]])
    with httpx2.Client(
        base_url=two_ehrs.base_url, timeout=30, headers={"Authorization": f"Bearer {tampered}"}
    ) as app:
        r = app.get("/api/context")
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


@pytest.mark.parametrize("ehr", ["/ehr2", "/ehr3"], ids=["secret-basic", "private-key-jwt"])
def test_standalone_launch_with_a_confidential_client(two_ehrs: TwoEhrs, ehr: str) -> None:
    """Standalone patient launch (no EHR launch id: launch/patient, the EHR picks the patient)
    for both confidential client types."""
    from launch.demo_client import follow_launch

    store = two_ehrs.store2 if ehr == "/ehr2" else None
    with httpx2.Client(base_url=two_ehrs.base_url, follow_redirects=False, timeout=30) as c:
        final = follow_launch(c, f"/launch?iss={two_ehrs.base_url}{ehr}/fhir")
        assert final.status_code == 200, final.text[:300]
        ctx = c.get("/api/context").json()
        assert ctx["patient"].startswith("Patient/pat-")
        if store is not None:
            assert ctx["patient"] == f"Patient/{store.patients()[0]['id']}"
