#!/usr/bin/env python
"""Calibrate the embedding-similarity threshold of concept resolution (rag.ask.CONCEPT_SIMILARITY).

For every code display in the sandbox's generated charts and the Synthea charts (when ../shared is
there) that the lexicon assigns to an entry, each of that entry's terms is a *positive* pair
(term, concept text) and every display of the same resource type assigned to another entry is a
*negative*. Prints precision/recall of "similarity ≥ t" per threshold; the threshold in use should
keep precision ≥ 0.99 (a wrong concept is a wrong answer; a missed one falls back to abstaining).

    .venv/bin/python scripts/calibrate_concepts.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fhir_adapters.normalize import CLINICAL_TYPES, project
from launch.sandbox.loader import load_fhir_dir
from launch.sandbox.synthetic import generate_patients
from launch.settings import Settings
from rag import load_embedder
from rag.ask import CONCEPT_SIMILARITY
from rag.concepts import lexicon

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    resources = generate_patients(20)
    synthea = ROOT.parent / "shared" / "data" / "synthea"
    if synthea.is_dir():
        resources += load_fhir_dir(synthea)
    else:
        print(f"(no Synthea charts at {synthea}; generated charts only)")
    lex = lexicon()
    displays: dict[tuple[str, str], str | None] = {}
    for r in resources:
        if r.get("resourceType") not in CLINICAL_TYPES - {"DocumentReference", "Encounter"}:
            continue
        fact = project(r)
        if fact is None or not fact.display:
            continue
        key = (fact.resource_type, fact.display)
        if key not in displays:
            displays[key] = lex.claim(fact.resource_type, fact.code_system, fact.code, fact.display)
    claimed = {k: v for k, v in displays.items() if v is not None}
    pairs: list[tuple[str, str, bool]] = []
    for (rtype, display), eid in claimed.items():
        for (other_type, other), other_id in claimed.items():
            if other_type != rtype:
                continue
            for term in lex.entries[eid].terms:
                if term in display.lower():
                    continue  # words the resolver finds without embeddings
                pairs.append((term, f"{other_type}: {other}", other_id == eid))
    embedder = load_embedder(Settings(env="dev").resolved_model_dir)
    texts = sorted({t for t, _, _ in pairs} | {c for _, c, _ in pairs})
    vectors = dict(zip(texts, embedder.embed(texts), strict=True))
    sims = np.array([float(vectors[t] @ vectors[c]) for t, c, _ in pairs])
    truth = np.array([p for _, _, p in pairs])
    print(
        f"{len(claimed)} assigned displays, {truth.sum()} positive / {(~truth).sum()} negative pairs"
    )
    print(f"{'threshold':>9} {'precision':>9} {'recall':>7} {'false +':>7}")
    for t in np.arange(0.5, 0.96, 0.05):
        hit = sims >= t
        tp, fp = int((hit & truth).sum()), int((hit & ~truth).sum())
        precision = tp / (tp + fp) if tp + fp else 1.0
        mark = "  <- in use" if abs(t - CONCEPT_SIMILARITY) < 1e-6 else ""
        print(f"{t:9.2f} {precision:9.3f} {tp / max(truth.sum(), 1):7.3f} {fp:7d}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
