"""Benchmark the ONNX embedder: throughput on short clinical sentences and single-query latency.

Usage: .venv/bin/python scripts/bench_embeddings.py [--model-dir DIR] [--threads 2]
Builds the model first if DIR holds none (that step needs torch).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import platformdirs

from rag.embeddings import load_embedder
from rag.model_build import build_onnx_model

LABS = [
    ("Hemoglobin A1c", "%", 5.0, 11.0),
    ("Glucose", "mg/dL", 70, 250),
    ("Creatinine", "mg/dL", 0.5, 2.5),
    ("LDL cholesterol", "mg/dL", 60, 190),
    ("Systolic blood pressure", "mmHg", 100, 180),
    ("Body mass index", "kg/m2", 18, 40),
    ("Potassium", "mmol/L", 3.2, 5.6),
    ("TSH", "mIU/L", 0.3, 6.0),
]
MEDS = [
    "metformin 500 mg",
    "lisinopril 10 mg",
    "atorvastatin 40 mg",
    "insulin glargine 20 units",
    "amlodipine 5 mg",
    "levothyroxine 50 mcg",
]
QUESTIONS = [
    "What was the HbA1c trend over the last 18 months?",
    "Which diabetes medications were previously prescribed?",
    "Any allergies to antibiotics?",
    "When was the last influenza vaccine?",
    "Has the creatinine been rising?",
]


def clinical_sentences(n: int, seed: int = 0) -> list[str]:
    """Short structured-resource sentences like the chunker produces."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        date = f"20{rng.randint(18, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if rng.random() < 0.7:
            name, unit, low, high = rng.choice(LABS)
            out.append(f"{name} {rng.uniform(low, high):.1f} {unit} on {date}")
        else:
            out.append(f"MedicationRequest {rng.choice(MEDS)} by mouth daily, active since {date}")
    return out


def main() -> None:
    default_dir = Path(platformdirs.user_data_dir("chartcite")) / "models" / "all-MiniLM-L6-v2"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=default_dir)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()

    build_onnx_model(args.model_dir, progress=print)
    embedder = load_embedder(args.model_dir, threads=args.threads)
    texts = clinical_sentences(args.texts)
    embedder.embed(texts[:64])  # warm-up: first runs allocate arenas

    started = time.perf_counter()
    embedder.embed(texts)  # batches of 32, length-sorted
    elapsed = time.perf_counter() - started
    print(
        f"throughput: {len(texts) / elapsed:.0f} texts/s "
        f"({len(texts)} texts, batch {embedder.batch_size}, {args.threads} threads, {elapsed:.2f} s)"
    )

    latencies = []
    for i in range(args.queries):
        query = QUESTIONS[i % len(QUESTIONS)]
        started = time.perf_counter()
        embedder.embed([query])
        latencies.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"single query: p50 {cuts[49]:.2f} ms, p95 {cuts[94]:.2f} ms "
        f"over {args.queries} queries ({args.threads} threads)"
    )


if __name__ == "__main__":
    main()
