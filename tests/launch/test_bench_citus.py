"""``chartcite bench ask --citus``: a tiny load, copied to a throw-away cluster, asked alike on both.

Skips where the local Citus cluster cannot be built (``tests/integration/test_citus.py``'s reasons).
"""

from __future__ import annotations

import re

import pytest

from launch import citus
from launch.bench_ask import main
from tests.integration.test_citus import CACHE, TARBALL, _why_not

_REASON = _why_not()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
ROW = r"\s+[\d.]+\s+[\d.]+\s+[\d.]+x"


def test_the_same_plan_answers_alike_on_single_node_and_citus(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--citus", "--patients", "3", "--asks", "6", "--clients", "2"]
    args += ["--citus-cache", str(CACHE), "--citus-tarball", str(TARBALL)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"loaded 3 patients in [\d.]+ s", out)
    copied = re.search(r"copied (\d+) rows of \d+ tables to Citus .*: (.*);", out)
    assert copied and int(copied[1]) > 0
    counts = dict(item.rsplit(" ", 1) for item in copied[2].split(", "))
    assert all(int(counts[t]) > 0 for t in ("concept", "chunk", "fhir_resource", "clinical_fact"))
    distributed = re.search(r"distributed on patient_id, \d+ shards: (.*)", out)
    assert distributed, out
    assert set(citus.DISTRIBUTED) <= set(distributed[1].split(", "))
    assert re.search(r"reference: .*\bconcept\b", out)
    for phase in ("sequential", "concurrent, 2 clients"):
        assert re.search(rf"{phase}: asks/s{ROW}", out), phase
        assert re.search(rf"{phase}: p95 ms{ROW}", out), phase
    assert re.search(rf"untimed warm-up: slowest ask ms{ROW}", out)
    # 6 sequential + 6 concurrent asks, every one answered on both, identically.
    assert "answers: 12 planned; answered on single node 12, on Citus 12; 0 mismatches" in out
    assert "mismatch " not in out
