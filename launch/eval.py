"""``chartcite eval --questions FILE``: score answers against a JSONL question set (being built)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    print("chartcite eval: not built yet", file=sys.stderr)
    return 2
