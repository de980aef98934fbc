"""``chartcite bench ask``: a tiny run loads, asks, compares with the naive pattern and reuses its load."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from launch.bench_ask import main

P50_P95 = r"p50 [\d.]+ ms, p95 [\d.]+ ms"


def test_a_tiny_run_prints_latencies_and_the_naive_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Short path: PostgreSQL's unix socket path has a length limit.
    with tempfile.TemporaryDirectory(prefix="ccbt-", dir="/tmp") as tmp:
        data_dir = Path(tmp) / "db"
        args = ["--patients", "3", "--asks", "10", "--clients", "4", "--data-dir", str(data_dir)]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert re.search(r"loaded 3 patients in [\d.]+ s", out)
        assert re.search(rf"sequential \(1 client\), 10 asks: server latency_ms {P50_P95}", out)
        assert re.search(rf"concurrent \(4 .*10 asks: server latency_ms {P50_P95}.* asks/s", out)
        assert re.search(rf"retrieval, ours .*{P50_P95}", out)
        assert re.search(rf"iterative_scan=relaxed_order\): {P50_P95}, [\d.]+ of 5 rows", out)
        assert re.search(
            rf"exact sequential scan .*\): {P50_P95}, 5.00 of 5 rows .*recall@5 1.00", out
        )
        assert re.search(
            r"ours p50 [\d.]+ ms .* vs naive p50 [\d.]+ ms .*naive/ours = [\d.]+x.* exact .*[\d.]+x",
            out,
        )

        # The same load again: the database is reused, nothing is imported a second time.
        assert main(["--patients", "3", "--asks", "0", "--data-dir", str(data_dir)]) == 0
        again = capsys.readouterr().out
        assert "reused the load generated-3-seed7" in again and "loaded 3 patients" not in again
