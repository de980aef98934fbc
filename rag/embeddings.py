"""Sentence embeddings with ONNX Runtime: all-MiniLM-L6-v2, mean pooling, L2 normalisation.

The pipeline reproduces sentence-transformers' `Transformer -> Pooling(mean) -> Normalize` modules
(https://www.sbert.net/docs/sentence_transformer/usage/usage.html) without torch: the tokenizer is
the model's own `tokenizer.json` (Hugging Face `tokenizers`), the encoder is an ONNX graph built once
by `rag.model_build`, and pooling happens here in numpy. Serving never imports torch.

Model directory layout (written by `rag.model_build.build_onnx_model`):

    model.onnx       inputs input_ids / attention_mask / token_type_ids (int64, [batch, sequence]),
                     output last_hidden_state (float32, [batch, sequence, dim])
    tokenizer.json
    manifest.json    ModelManifest; its sha256 must match model.onnx

Errors:

    ModelError               base: machine `code`, HTTP `status_code`
     ├── ModelNotBuiltError  the model directory is missing, incomplete or tampered
     └── ModelBuildError     (rag.model_build) converting the packaged weights failed
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

__all__ = [
    "MANIFEST_FILE",
    "MODEL_FILE",
    "MODEL_INPUTS",
    "TOKENIZER_FILE",
    "Embedder",
    "ModelError",
    "ModelManifest",
    "ModelNotBuiltError",
    "OnnxEmbedder",
    "QueryCacheInfo",
    "file_sha256",
    "load_embedder",
    "read_manifest",
]

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"

# The ONNX graph's input order (rag.model_build exports them in this order); runs feed by name.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_BATCH_SIZE = 32
# Questions are embedded one at a time and repeat ("latest blood pressure?"); 1,024 vectors of
# 384 float32 are 1.5 MiB.
DEFAULT_QUERY_CACHE = 1024

FloatMatrix = npt.NDArray[np.float32]
_T = TypeVar("_T")


class ModelError(Exception):
    """Base error of the embedding model; carries a machine code and an HTTP status."""

    code = "model_error"
    status_code = 500


class ModelNotBuiltError(ModelError):
    """The ONNX model directory is missing, incomplete or does not match its manifest."""

    code = "model_not_built"
    status_code = 503

    def __init__(self, model_dir: Path, reason: str) -> None:
        self.model_dir = model_dir
        self.reason = reason
        super().__init__(
            f"the embedding model is missing at {model_dir} ({reason}); run `chartcite model build`"
        )


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    model_id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        """Return shape (len(texts), dim), float32, one unit-length row per text, in input order."""
        ...


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """What `manifest.json` records about a built model directory."""

    model_id: str
    dim: int
    max_length: int
    sha256: str
    tokenizer_sha256: str
    created_at: str
    source_package: str
    source_version: str
    opset: int
    verified_min_cosine: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, raw: str) -> ModelManifest:
        data: Any = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("manifest is not a JSON object")
        return cls(
            model_id=_field(data, "model_id", str),
            dim=_field(data, "dim", int),
            max_length=_field(data, "max_length", int),
            sha256=_field(data, "sha256", str),
            tokenizer_sha256=_field(data, "tokenizer_sha256", str),
            created_at=_field(data, "created_at", str),
            source_package=_field(data, "source_package", str),
            source_version=_field(data, "source_version", str),
            opset=_field(data, "opset", int),
            verified_min_cosine=_field(data, "verified_min_cosine", float),
        )


def _field(data: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = data.get(name)
    # bool is an int subclass; a manifest with `"dim": true` is still broken.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"manifest field {name!r} is missing or not a {kind.__name__}")
    return value


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: Path, *, verify: bool = True) -> ModelManifest:
    """Read `manifest.json` and (by default) check the model files against its hashes."""
    manifest_path = model_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ModelNotBuiltError(model_dir, f"{MANIFEST_FILE} not found")
    try:
        manifest = ModelManifest.from_json(manifest_path.read_text(encoding="utf-8"))
    except (TypeError, ValueError) as exc:  # ValueError covers JSON and UTF-8 decoding
        raise ModelNotBuiltError(model_dir, f"{MANIFEST_FILE} is invalid: {exc}") from exc
    if verify:
        for name, expected in (
            (MODEL_FILE, manifest.sha256),
            (TOKENIZER_FILE, manifest.tokenizer_sha256),
        ):
            path = model_dir / name
            if not path.is_file():
                raise ModelNotBuiltError(model_dir, f"{name} not found")
            if file_sha256(path) != expected:
                raise ModelNotBuiltError(model_dir, f"{name} does not match its manifest sha256")
    return manifest


@dataclass(frozen=True, slots=True)
class QueryCacheInfo:
    """Counters of the single-text (question) cache, like `functools.lru_cache`'s."""

    hits: int
    misses: int
    size: int
    maxsize: int


def query_cache_key(model_id: str, text: str) -> tuple[str, str]:
    """The cache key of a question: model id and the text with its whitespace collapsed.

    Collapsing whitespace cannot change the vector: the BERT pre-tokenizer splits on whitespace.
    """
    return model_id, " ".join(text.split())


class OnnxEmbedder:
    """all-MiniLM-style sentence embedder: ONNX Runtime encoder + numpy mean pooling.

    A call with a single text (a question) goes through a bounded LRU cache keyed by
    `query_cache_key`, so a repeated question skips the model; batches (indexing) never touch it.

    Safe to share between threads: the ONNX Runtime session allows concurrent `run` calls, the
    tokenizer is configured once here and only read afterwards (`encode_batch` takes `&self`), and
    the cache is guarded by a lock.
    """

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        *,
        model_id: str,
        dim: int,
        max_length: int,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        query_cache_size: int = DEFAULT_QUERY_CACHE,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if query_cache_size < 0:
            raise ValueError("query_cache_size cannot be negative")
        self.model_id = model_id
        self.dim = dim
        self.max_length = max_length
        self.batch_size = batch_size
        #: How many times the ONNX graph ran (one per batch).
        self.model_runs = 0
        self._cache: OrderedDict[tuple[str, str], FloatMatrix] = OrderedDict()
        self._cache_size = query_cache_size
        self._cache_lock = threading.Lock()
        self._hits = self._misses = 0

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        # One graph runs at a time per call; parallelism is inside operators.
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = tuple(i.name for i in self._session.get_inputs())
        unknown = set(self._inputs) - set(MODEL_INPUTS)
        if unknown:
            raise ValueError(f"unexpected ONNX model inputs: {sorted(unknown)}")

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The shipped tokenizer.json pads every text to a fixed 128 and truncates at 128;
        # sentence-transformers truncates at max_seq_length (256) and pads to the batch's longest.
        padding = tokenizer.padding
        self._pad_id = int(padding["pad_id"]) if padding else 0
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer = tokenizer

    def __repr__(self) -> str:
        return f"OnnxEmbedder(model_id={self.model_id!r}, dim={self.dim})"

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        """Embed texts; rows are L2-normalised and in input order."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a single string")
        items = list(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(items) == 1 and self._cache_size:
            return self._embed_query(items[0])
        return self._embed_texts(items)

    def query_cache_info(self) -> QueryCacheInfo:
        with self._cache_lock:
            return QueryCacheInfo(self._hits, self._misses, len(self._cache), self._cache_size)

    def _embed_query(self, text: str) -> FloatMatrix:
        key = query_cache_key(self.model_id, text)
        with self._cache_lock:
            row = self._cache.get(key)
            if row is not None:
                self._cache.move_to_end(key)
                self._hits += 1
                return row.copy()
            self._misses += 1
        # Outside the lock: two threads missing on the same text both run the model, harmlessly.
        row = self._embed_texts([text])
        row.setflags(write=False)
        with self._cache_lock:
            self._cache[key] = row
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return row.copy()

    def _embed_texts(self, items: list[str]) -> FloatMatrix:
        encodings = self._tokenizer.encode_batch(items, add_special_tokens=True)
        # Sorting by token length keeps padding inside each batch small.
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._embed_batch([encodings[i] for i in chunk])
        return out

    def _embed_batch(self, encodings: Sequence[Any]) -> FloatMatrix:
        self.model_runs += 1
        width = max(len(e.ids) for e in encodings)
        shape = (len(encodings), width)
        feeds = {
            "input_ids": np.full(shape, self._pad_id, dtype=np.int64),
            "attention_mask": np.zeros(shape, dtype=np.int64),
            "token_type_ids": np.zeros(shape, dtype=np.int64),
        }
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            feeds["input_ids"][row, :n] = enc.ids
            feeds["attention_mask"][row, :n] = enc.attention_mask
            feeds["token_type_ids"][row, :n] = enc.type_ids
        (hidden,) = self._session.run(
            ["last_hidden_state"], {name: feeds[name] for name in self._inputs}
        )
        return mean_pool_normalize(np.asarray(hidden, dtype=np.float32), feeds["attention_mask"])


def mean_pool_normalize(
    hidden: npt.NDArray[np.float32], attention_mask: npt.NDArray[np.int64]
) -> FloatMatrix:
    """Mean of the token vectors the mask keeps, then L2 normalisation (sentence-transformers)."""
    mask = attention_mask[..., None].astype(np.float32)
    summed = (hidden * mask).sum(axis=1)
    counts = np.clip(mask.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return (pooled / norms).astype(np.float32, copy=False)


def load_embedder(model_dir: Path, *, threads: int | None = None) -> OnnxEmbedder:
    """Load a model directory built by `chartcite model build`, checking it against its manifest."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelNotBuiltError(model_dir, "directory not found")
    manifest = read_manifest(model_dir)
    try:
        embedder = OnnxEmbedder(
            model_dir / MODEL_FILE,
            model_dir / TOKENIZER_FILE,
            model_id=manifest.model_id,
            dim=manifest.dim,
            max_length=manifest.max_length,
            threads=threads,
        )
    except Exception as exc:  # onnxruntime/tokenizers raise their own (untyped) exception classes
        raise ModelNotBuiltError(model_dir, f"cannot load the model: {exc}") from exc
    return embedder
